//! The `kiln-lox` command: run a Lox file, or a REPL; `--bench-against CLOX` runs the
//! benchmarks against clox.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::process::ExitCode;

use kiln_lox::jit::JitMode;
use kiln_lox::vm::{InterpretResult, Options, Vm};

const USAGE: &str = "Usage: kiln-lox [options] [path]";

const HELP: &str = "\
kiln-lox: Lox (Crafting Interpreters) on a JIT-ready bytecode VM

Usage: kiln-lox [options] [path]

Runs the Lox program at PATH, or a REPL without one.
Exit status: 0 ok, 64 usage, 65 compile error, 70 runtime error, 74 file error.

Options:
  --gc-stress              collect garbage at every allocation
  --stats                  print VM statistics on stderr at exit
  --jit=on                 interpret, compile functions to x86-64 when they get hot
                           (the default)
  --jit=always             compile every function before it is first called
  --jit=off                interpreter only
  --code-zone SIZE         bytes of the JIT's code zone (kiln-jit): a number with an
                           optional K, M or G suffix (e.g. 512K, 64M); at least 48K,
                           at most 1G; default 64M
  --bench-against CLOX     run the benchmarks in examples/lox/bench against the clox
                           binary CLOX in every JIT mode, or those given with --jit=
                           (with --runs N, default 5, and --bench-dir DIR)
  --help                   this text
";

/// What the command line asks for.
enum Command {
    Run {
        options: Options,
        stats: bool,
        path: Option<String>,
    },
    Bench(kiln_lox::bench::BenchOptions),
    Help,
}

/// A usage error: the message, printed with the usage line, exit status 64.
struct UsageError(String);

fn parse_args(args: &[String]) -> Result<Command, UsageError> {
    let mut options = Options::default();
    let mut stats = false;
    let mut path = None;
    let mut clox = None;
    let mut runs = 5;
    let mut bench_dir = None;
    let mut jit_modes = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let mut value = |name: &str| -> Result<String, UsageError> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| UsageError(format!("{name} needs a value")))
        };
        match arg {
            "--help" | "-h" => return Ok(Command::Help),
            "--gc-stress" => options.gc_stress = true,
            "--stats" => stats = true,
            "--jit=off" | "--jit=on" | "--jit=always" => {
                options.jit = match arg {
                    "--jit=off" => JitMode::Off,
                    "--jit=on" => JitMode::On,
                    _ => JitMode::Always,
                };
                jit_modes.push(arg["--jit=".len()..].to_string());
            }
            "--code-zone" => options.code_zone = Some(parse_zone_size(&value(arg)?)?),
            "--bench-against" => clox = Some(value(arg)?),
            "--runs" => {
                let text = value(arg)?;
                runs =
                    text.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        UsageError(format!("--runs: not a positive number: {text}"))
                    })?;
            }
            "--bench-dir" => bench_dir = Some(value(arg)?),
            _ if arg.starts_with("--jit=") => {
                return Err(UsageError(format!(
                    "{arg}: unknown JIT mode (off, on, always)"
                )))
            }
            _ if arg.starts_with("--code-zone=") => {
                options.code_zone = Some(parse_zone_size(&arg["--code-zone=".len()..])?)
            }
            _ if arg.starts_with("--") => return Err(UsageError(format!("unknown option {arg}"))),
            _ if path.is_some() => return Err(UsageError("more than one path".into())),
            _ => path = Some(arg.to_string()),
        }
        i += 1;
    }
    options.count_instructions = stats;
    if let Some(clox) = clox {
        return Ok(Command::Bench(kiln_lox::bench::BenchOptions {
            clox,
            runs,
            dir: bench_dir,
            gc_stress: options.gc_stress,
            modes: jit_modes,
        }));
    }
    Ok(Command::Run {
        options,
        stats,
        path,
    })
}

/// `--code-zone`'s value: bytes, with an optional K, M or G suffix (powers of 1024), between
/// `jit::MIN_ZONE` and 1 GiB (the zone is reserved address space; beyond 1 GiB the code's
/// 32-bit calls to the runtime could not reach across it).
fn parse_zone_size(text: &str) -> Result<u64, UsageError> {
    let bad = |why: &str| UsageError(format!("--code-zone: {why}: {text:?}"));
    let (digits, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => {
            let unit = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(bad("the suffix must be K, M or G")),
            };
            (&text[..at], unit)
        }
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "not a size (a number with an optional K, M or G suffix)",
        ));
    }
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| bad("too large"))?;
    let min = kiln_lox::jit::MIN_ZONE;
    if size < min {
        return Err(bad(&format!("too small (at least {}K)", min >> 10)));
    }
    if size > 1 << 30 {
        return Err(bad("too large (at most 1G)"));
    }
    Ok(size)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(UsageError(message)) => {
            eprintln!("kiln-lox: {message}\n{USAGE}\n(kiln-lox --help for the options)");
            return ExitCode::from(64);
        }
    };
    match command {
        Command::Help => {
            let _ = std::io::stdout().write_all(HELP.as_bytes());
            ExitCode::SUCCESS
        }
        Command::Bench(options) => match kiln_lox::bench::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln-lox: benchmark: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            options,
            stats,
            path,
        } => {
            // The compiler recurses per nesting level; give it room for clox's depths.
            let worker = std::thread::Builder::new()
                .stack_size(256 << 20)
                .spawn(move || run(options, stats, path));
            match worker.map(|w| w.join()) {
                Ok(Ok(code)) => ExitCode::from(code),
                _ => {
                    eprintln!("kiln-lox: the interpreter thread failed");
                    ExitCode::from(70)
                }
            }
        }
    }
}

fn run(options: Options, stats: bool, path: Option<String>) -> u8 {
    let vm = match Vm::new(options, Box::new(std::io::stdout())) {
        Ok(vm) => Box::new(vm),
        Err(e) => {
            eprintln!("kiln-lox: {e}");
            return 70;
        }
    };
    let (mut vm, code) = match path {
        Some(path) => run_file(vm, &path),
        None => (repl(vm), 0),
    };
    vm.flush();
    if stats {
        let _ = vm.write_stats(&mut std::io::stderr());
    }
    code
}

fn run_file(vm: Box<Vm>, path: &str) -> (Box<Vm>, u8) {
    let source = match std::fs::read(path) {
        Ok(source) => source,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            eprintln!("Could not open file \"{path}\".");
            return (vm, 74);
        }
        Err(_) => {
            eprintln!("Could not read file \"{path}\".");
            return (vm, 74);
        }
    };
    let (vm, result) = vm.interpret(&source);
    let code = match result {
        InterpretResult::Ok => 0,
        InterpretResult::CompileError => 65,
        InterpretResult::RuntimeError => 70,
    };
    (vm, code)
}

/// clox's REPL: a prompt, then each line (as `fgets` with a 1024-byte buffer returns it: at
/// most 1023 bytes) is compiled and run on its own; globals persist. End of input ends it.
fn repl(mut vm: Box<Vm>) -> Box<Vm> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    // Writes to stdout ignore errors (a closed pipe ends nothing but the output), as clox's do.
    let prompt = |text: &[u8]| {
        let mut out = std::io::stdout();
        let _ = out.write_all(text).and_then(|()| out.flush());
    };
    loop {
        prompt(b"> ");
        line.clear();
        if read_fgets_line(&mut input, &mut line).unwrap_or(0) == 0 {
            prompt(b"\n");
            return vm;
        }
        vm = vm.interpret(&line).0;
        vm.flush();
    }
}

/// Reads up to and including a newline, at most 1023 bytes, like `fgets(buf, 1024, stdin)`.
fn read_fgets_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    const MAX: usize = 1023;
    while line.len() < MAX {
        let buffer = input.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        let room = MAX - line.len();
        let take = buffer
            .iter()
            .take(room)
            .position(|&b| b == b'\n')
            .map_or(buffer.len().min(room), |p| p + 1);
        line.extend_from_slice(&buffer[..take]);
        input.consume(take);
        if line.last() == Some(&b'\n') {
            break;
        }
    }
    Ok(line.len())
}
