//! `kiln-executor`: the process where code linked by a kiln controller runs.
#![forbid(unsafe_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(kiln_remote::executor_main(&args, &[]))
}
