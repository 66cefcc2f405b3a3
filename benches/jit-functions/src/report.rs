//! The parent's side: a child's lines parsed into a run, a linker's runs into a row, and the
//! report: the table, kiln against its peers, what each debug sink costs, the threaded and batch
//! figures, the aims, and where a unit's time goes.

use crate::{Linker, Options};

/// One child process's result.
#[derive(Default)]
pub struct Run {
    done: usize,
    requested: usize,
    code_bytes: u64,
    secs: f64,
    cpu_secs: f64,
    vm_size: i64,
    vm_rss: i64,
    exec: i64,
    exec_rss: i64,
    maps: i64,
    verified: Option<Result<String, String>>,
    stopped: Option<String>,
    details: Vec<String>,
}

impl Run {
    /// A child that could not be run or gave no result.
    pub fn failed(requested: usize, why: String) -> Run {
        Run {
            requested,
            stopped: Some(why),
            ..Run::default()
        }
    }

    fn per_second(&self) -> f64 {
        self.done as f64 / self.secs.max(1e-9)
    }

    /// Microseconds per function.
    fn us_each(&self) -> f64 {
        1e6 * self.secs / self.done.max(1) as f64
    }

    /// CPU microseconds (the process's, all threads) per function.
    fn cpu_us_each(&self) -> f64 {
        1e6 * self.cpu_secs / self.done.max(1) as f64
    }

    /// How many CPUs the loop kept busy on average: 1 for one thread that always ran, less when
    /// the machine's other users took the CPU, up to the thread count when threads ran at once.
    fn cpu_per_wall(&self) -> f64 {
        self.cpu_secs / self.secs.max(1e-9)
    }

    fn per_code_byte(&self, v: i64) -> f64 {
        v as f64 / self.code_bytes.max(1) as f64
    }
}

/// The lines a child printed (see `child` in main.rs).
pub fn parse_run(text: &str) -> Run {
    let mut r = Run::default();
    for line in text.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "RESULT" => {
                for kv in rest.split_whitespace() {
                    let Some((k, v)) = kv.split_once('=') else {
                        continue;
                    };
                    let n: i64 = v.parse().unwrap_or(0);
                    match k {
                        "requested" => r.requested = n as usize,
                        "done" => r.done = n as usize,
                        "code_bytes" => r.code_bytes = n as u64,
                        "elapsed_ns" => r.secs = n as f64 / 1e9,
                        "cpu_ns" => r.cpu_secs = n as f64 / 1e9,
                        "vm_size" => r.vm_size = n,
                        "vm_rss" => r.vm_rss = n,
                        "exec" => r.exec = n,
                        "exec_rss" => r.exec_rss = n,
                        "maps" => r.maps = n,
                        _ => {}
                    }
                }
            }
            "VERIFY_OK" => r.verified = Some(Ok(rest.to_string())),
            "VERIFY_ERR" => r.verified = Some(Err(rest.to_string())),
            "STOPPED" => r.stopped = Some(rest.to_string()),
            "DETAIL" => r.details.push(rest.to_string()),
            _ => {}
        }
    }
    r
}

/// A linker's runs, in the order they ran (round by round).
pub struct Row {
    name: &'static str,
    label: String,
    in_table: bool,
    runs: Vec<Run>,
    /// The median run by functions/s (of an even number, the slower of the middle two): the
    /// table shows it whole, so that its memory columns belong to the same run as its rate.
    median: usize,
}

impl Row {
    pub fn of(l: &Linker, runs: Vec<Run>) -> Row {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].per_second().total_cmp(&runs[b].per_second()));
        let median = order
            .get(runs.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0);
        Row {
            name: l.name,
            label: l.label.clone(),
            in_table: l.in_table,
            runs,
            median,
        }
    }

    fn mid(&self) -> &Run {
        &self.runs[self.median]
    }

    /// Slowest and fastest run, functions/s.
    fn range(&self) -> (f64, f64) {
        let rates = self.runs.iter().map(Run::per_second);
        let lo = rates.clone().fold(f64::INFINITY, f64::min);
        (lo, rates.fold(0.0, f64::max))
    }

    /// The check column: the median run's last calls, or the first run that failed.
    fn check(&self) -> String {
        for (i, r) in self.runs.iter().enumerate() {
            if let Some(Err(e)) = &r.verified {
                return format!("FAILED (run {}): {e}", i + 1);
            }
        }
        match &self.mid().verified {
            Some(Ok(s)) => format!("ok, {s}"),
            _ => "-".into(),
        }
    }

    /// Linked everything it was asked to, and checked.
    fn complete(&self) -> bool {
        let m = self.mid();
        m.done > 0 && m.done == m.requested && matches!(m.verified, Some(Ok(_)))
    }
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `a / b` as a factor ("1.23x"; "0.04093x (1/24)" when small).
fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if !r.is_finite() || r <= 0.0 {
        "-".to_string()
    } else if r >= 0.1 {
        format!("{r:.2}x")
    } else {
        format!("{r:.5}x (1/{:.0})", 1.0 / r)
    }
}

/// How busy the machine is: `/proc/loadavg`'s first three fields, and the share of time some
/// runnable task waited for a CPU over the last 10 and 60 s (`/proc/pressure/cpu`).
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    let pressure = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|s| {
            let some = s.lines().find(|l| l.starts_with("some "))?;
            let field = |k: &str| some.split_whitespace().find_map(|f| f.strip_prefix(k));
            Some(format!("{}%/{}%", field("avg10=")?, field("avg60=")?))
        });
    match pressure {
        Some(p) => format!("{load}, CPU pressure {p}"),
        None => load,
    }
}

pub fn print(o: &Options, rows: &[Row], load: [String; 2]) {
    let sizes = crate::code::sizes(o.count);
    let total: usize = sizes.iter().sum();
    println!(
        "{} functions of {}-{} bytes ({:.1} MB of code, {:.0} bytes on average), each its own \
         unit; each calls libc abs and an earlier function",
        o.count,
        crate::code::MIN_SIZE,
        crate::code::MAX_SIZE,
        total as f64 / 1e6,
        total as f64 / o.count as f64
    );
    println!(
        "each linker in a child process of its own, {} round(s), round robin; a row is the median \
         run by functions/s; range = slowest..fastest run",
        o.runs
    );
    println!(
        "{} CPUs; load average (1, 5, 15 min) and CPU pressure (some, 10 s/60 s): {} before, {} \
         after",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load[0],
        load[1]
    );
    print_table(rows);
    print_notes(o, rows);
    let find = |name: &str| rows.iter().find(|r| r.name == name && r.mid().done > 0);
    if let Some(k) = find("kiln") {
        print_peers(k, &find);
        print_sinks(k, &find);
        print_threads_and_batch(o, &find);
        // The aims are judged on `Session::link_function` when it ran: a JIT holding its code
        // and relocations links that way (as cranelift-jit's row does, define_function_bytes).
        print_aims(o, find("kiln-borrowed").unwrap_or(k), &find);
    }
    for r in rows {
        let m = r.mid();
        if m.details.is_empty() {
            continue;
        }
        println!();
        if !r.in_table {
            println!(
                "{} (diagnostic, not in the table: collecting costs): {} functions/s, {:.2} µs \
                 each, {}",
                r.label,
                thousands(m.per_second()),
                m.us_each(),
                r.check()
            );
        }
        m.details.iter().for_each(|d| println!("{d}"));
    }
}

fn print_table(rows: &[Row]) {
    // The label column fits the longest label shown.
    let w = rows
        .iter()
        .filter(|r| r.in_table)
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(24);
    println!();
    println!(
        "{:<w$} {:>7} {:>11} {:>7} {:>13} {:>7} {:>8} {:>8} {:>7} {:>6} {:>9} {:>8}  check",
        "",
        "linked",
        "functions/s",
        "µs each",
        "range (k/s)",
        "CPU µs",
        "CPU/wall",
        "VmSize/B",
        "VmRSS/B",
        "r-x/B",
        "r-x RSS/B",
        "mappings"
    );
    println!("{}", "-".repeat(128 + w));
    for r in rows.iter().filter(|r| r.in_table) {
        let m = r.mid();
        let (lo, hi) = r.range();
        println!(
            "{:<w$} {:>7} {:>11} {:>7.2} {:>13} {:>7.2} {:>8.2} {:>8.2} {:>7.2} {:>6.2} {:>9.2} {:>+8}  {}",
            r.label,
            m.done,
            thousands(m.per_second()),
            m.us_each(),
            format!("{}..{}", thousands(lo / 1e3), thousands(hi / 1e3)),
            m.cpu_us_each(),
            m.cpu_per_wall(),
            m.per_code_byte(m.vm_size),
            m.per_code_byte(m.vm_rss),
            m.per_code_byte(m.exec),
            m.per_code_byte(m.exec_rss),
            m.maps,
            r.check()
        );
    }
}

fn print_notes(o: &Options, rows: &[Row]) {
    println!();
    for line in [
        "µs each    wall time of the loop / functions linked (all threads together)",
        "CPU µs     the process's CPU time (user + system, all threads) in the loop / functions linked",
        "CPU/wall   CPUs kept busy: 1.00 = one thread that always ran; less = the machine's other",
        "           users took the CPU; up to the thread count when threads ran at once",
        "VmSize/B   growth of VmSize (all mapped address space, reservations too) per byte of code",
        "VmRSS/B    growth of VmRSS (resident memory, heap too) per byte of code",
        "r-x/B      growth of the executable mappings not backed by a file (anonymous, shared",
        "           anonymous or memfd: JIT'd code) per byte of code; r-x RSS/B: of their",
        "           resident part (Rss in smaps), read after the check ran the whole chain",
        "mappings   growth of the number of mappings (the kernel's limit: vm.max_map_count)",
        "(VmSize and VmRSS from /proc/self/status, the rest from /proc/self/smaps)",
    ] {
        println!("{line}");
    }
    println!(
        "kiln: Session::link_graph per function, debug sinks off (DebugOptions::none()) unless the \
         row names them, stats off; link_function: Session::link_function with the function's \
         code and edges borrowed (no graph built); {} threads: one Arc<Session>, thread t links f{{i}} with \
         i % {} = t, each calling its own thread's previous function ({} sessions: the same, \
         thread t into a session of its own); batches: Session::link_graphs; all sinks = gdb, \
         perf map, jitdump (temp dir), valgrind",
        o.threads, o.threads, o.threads
    );
    println!(
        "{}{}",
        if o.host_by_dlsym {
            "abs found by each linker's own lookup (--host-by-dlsym)"
        } else {
            "abs given to each linker by address (Session::define, JITBuilder::symbol)"
        },
        if o.kiln_frames {
            "; kiln registers an FDE per function (--kiln-frames)"
        } else {
            ""
        }
    );
    for r in rows {
        for (i, run) in r.runs.iter().enumerate() {
            if let Some(s) = &run.stopped {
                println!(
                    "{} (run {}): {s} ({} of {} functions linked)",
                    r.label,
                    i + 1,
                    run.done,
                    run.requested
                );
            }
        }
    }
}

fn print_peers<'r>(k: &Row, find: &dyn Fn(&str) -> Option<&'r Row>) {
    println!();
    let (km, label) = (k.mid(), &k.label);
    for peer in ["cranelift", "cranelift-arena", "naive"] {
        let Some(p) = find(peer) else { continue };
        let pm = p.mid();
        let per_byte = |r: &Run, v: fn(&Run) -> i64| r.per_code_byte(v(r));
        println!(
            "{label} / {}: functions/s {}, VmSize/B {}, VmRSS/B {}, r-x/B {}, r-x RSS/B {}",
            p.label,
            ratio(km.per_second(), pm.per_second()),
            ratio(per_byte(km, |r| r.vm_size), per_byte(pm, |r| r.vm_size)),
            ratio(per_byte(km, |r| r.vm_rss), per_byte(pm, |r| r.vm_rss)),
            ratio(per_byte(km, |r| r.exec), per_byte(pm, |r| r.exec)),
            ratio(per_byte(km, |r| r.exec_rss), per_byte(pm, |r| r.exec_rss)),
        );
    }
}

/// Each sink's cost per unit: its row's µs per function minus the sinks-off row's.
fn print_sinks<'r>(k: &Row, find: &dyn Fn(&str) -> Option<&'r Row>) {
    let sinks: Vec<&Row> = [
        "kiln-gdb",
        "kiln-perf-map",
        "kiln-jitdump",
        "kiln-all-sinks",
    ]
    .iter()
    .filter_map(|n| find(n))
    .collect();
    if sinks.is_empty() {
        return;
    }
    println!();
    println!(
        "debug sinks, kiln one function at a time (median runs): µs per function, wall and CPU, \
         and what the sink adds per unit"
    );
    println!(
        "  {:<26} {:>8} {:>8} {:>8} {:>8}",
        "", "wall µs", "added", "CPU µs", "added"
    );
    let (base, base_cpu) = (k.mid().us_each(), k.mid().cpu_us_each());
    println!(
        "  {:<26} {:>8.2} {:>8} {:>8.2}",
        "off (DebugOptions::none())", base, "", base_cpu
    );
    for s in sinks {
        let (us, cpu) = (s.mid().us_each(), s.mid().cpu_us_each());
        println!(
            "  {:<26} {:>8.2} {:>+8.2} {:>8.2} {:>+8.2}   ({} functions/s)",
            s.label,
            us,
            us - base,
            cpu,
            cpu - base_cpu,
            thousands(s.mid().per_second()),
        );
    }
}

fn print_threads_and_batch<'r>(o: &Options, find: &dyn Fn(&str) -> Option<&'r Row>) {
    // Each round's ratio, with the CPUs the row's run kept busy (CPU/wall) when it is threaded:
    // a threaded run that got one CPU cannot scale, whatever the linker.
    let per_round = |k: &Row, other: &Row, threaded: bool| -> String {
        k.runs
            .iter()
            .zip(&other.runs)
            .map(|(a, b)| {
                let r = ratio(b.per_second(), a.per_second());
                if threaded {
                    format!("{r} ({:.2} CPUs)", b.cpu_per_wall())
                } else {
                    r
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut any = false;
    let linear = format!("scaling; {:.2}x would be linear", o.threads as f64);
    // Each row against the one-at-a-time row of the same front end (graphs or lent functions).
    for (name, base, what) in [
        ("kiln-threads", "kiln", linear.as_str()),
        (
            "kiln-sessions",
            "kiln",
            "a session per thread, nothing of kiln's shared: what the machine allowed",
        ),
        ("kiln-borrowed-threads", "kiln-borrowed", linear.as_str()),
        (
            "kiln-batch",
            "kiln",
            "against one Session::link_graph per function",
        ),
        (
            "kiln-batch-unit",
            "kiln",
            "a batch linked as one unit, against one unit per function",
        ),
        (
            "kiln-borrowed-unit",
            "kiln-borrowed",
            "Session::link_functions_with, against one link_function per function",
        ),
    ] {
        let (Some(r), Some(k)) = (find(name), find(base)) else {
            continue;
        };
        let threaded = name.ends_with("threads") || name == "kiln-sessions";
        if !any {
            println!();
            any = true;
        }
        println!(
            "{}: {} functions/s = {} {} ({what}); round by round: {}",
            r.label,
            thousands(r.mid().per_second()),
            ratio(r.mid().per_second(), k.mid().per_second()),
            k.label,
            per_round(k, r, threaded)
        );
        if threaded {
            // Wall-time scaling needs free CPUs; the CPU time per function says what sharing
            // the session costs whatever the machine's load (locks, cache lines moving).
            println!(
                "  CPU/wall {:.2} (at 1 thread {:.2}); CPU µs per function {:.2} against {:.2} at 1 \
                 thread ({})",
                r.mid().cpu_per_wall(),
                k.mid().cpu_per_wall(),
                r.mid().cpu_us_each(),
                k.mid().cpu_us_each(),
                ratio(r.mid().cpu_us_each(), k.mid().cpu_us_each())
            );
        }
    }
}

fn print_aims<'r>(o: &Options, k: &Row, find: &dyn Fn(&str) -> Option<&'r Row>) {
    let m = k.mid();
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let partial = if k.complete() {
        String::new()
    } else {
        format!(
            " (over the {} of {} functions linked, or not checked)",
            m.done, m.requested
        )
    };
    println!();
    println!(
        "aim (issue 11): at least 1,000,000 functions/s, one thread, sinks off: {} {} \
         functions/s ({:.2} µs each): {}{partial}",
        k.label,
        thousands(m.per_second()),
        m.us_each(),
        met(m.per_second() >= 1e6 && k.complete()),
    );
    // Wall time is what the issue measures; CPU time is what the link costs when the machine's
    // other users take turns on the CPU (CPU/wall below 1).
    println!(
        "  on CPU time: {:.2} µs per function = {} functions per CPU second: {}",
        m.cpu_us_each(),
        thousands(1e6 / m.cpu_us_each().max(1e-9)),
        met(m.cpu_us_each() <= 1.0 && k.complete()),
    );
    match find("cranelift") {
        Some(c) => {
            let x = m.per_second() / c.mid().per_second();
            println!(
                "aim (issue 11): at least 6x cranelift-jit in the same run: {x:.2}x ({} against \
                 {} functions/s): {}{partial}",
                thousands(m.per_second()),
                thousands(c.mid().per_second()),
                met(x >= 6.0 && k.complete()),
            );
            let x_cpu = c.mid().cpu_us_each() / m.cpu_us_each().max(1e-9);
            println!(
                "  on CPU time: {x_cpu:.2}x ({:.2} against {:.2} CPU µs per function): {}",
                m.cpu_us_each(),
                c.mid().cpu_us_each(),
                met(x_cpu >= 6.0 && k.complete()),
            );
        }
        None => {
            println!("aim (issue 11): at least 6x cranelift-jit: not measured (cranelift not run)")
        }
    }
    let rss = m.per_code_byte(m.vm_rss);
    println!(
        "aim (issue 11): VmRSS at most 2 bytes per code byte ({} functions): {rss:.2} ({:.0} \
         bytes per function, {:.0} of them code): {}{partial}",
        o.count,
        m.vm_rss as f64 / m.done.max(1) as f64,
        m.code_bytes as f64 / m.done.max(1) as f64,
        met(rss <= 2.0 && k.complete()),
    );
    // Threads are compared with the one-thread row of the same front end.
    for (threads, one, call) in [
        ("kiln-threads", "kiln", "Session::link_graph"),
        (
            "kiln-borrowed-threads",
            "kiln-borrowed",
            "Session::link_function",
        ),
    ] {
        if let (Some(t), Some(one)) = (find(threads), find(one)) {
            println!(
                "issue 11: links/s at {} threads / at 1 thread, both {call} (the scaling figure; \
                 the issue sets no number): {}",
                o.threads,
                ratio(t.mid().per_second(), one.mid().per_second())
            );
        }
    }
    // The batch figure: a JIT that compiles in batches, against cranelift-jit finalizing once
    // per batch (the issue asks for the figure, and sets no number).
    if let Some(c) = find("cranelift-batch") {
        for (name, call) in [
            ("kiln-batch", "Session::link_graphs"),
            ("kiln-batch-unit", "Session::link_graphs_as_unit"),
            ("kiln-borrowed-unit", "Session::link_functions_with"),
        ] {
            if let Some(b) = find(name) {
                println!(
                    "issue 11: batches of {} ({call}): {} functions/s = {} {}",
                    o.batch,
                    thousands(b.mid().per_second()),
                    ratio(b.mid().per_second(), c.mid().per_second()),
                    c.label
                );
            }
        }
    }
}
