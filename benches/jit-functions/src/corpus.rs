//! The second benchmark of issue 4: link the SQLite corpus driver with its archive and remove
//! it again, many times in one session. Issue 11: this link must not get slower.

use crate::procmem::MemSnapshot;
use kiln::{DebugOptions, Session};
use std::path::Path;
use std::time::{Duration, Instant};

/// The host libraries a native link of the SQLite driver needs (tests/corpus/manifest.tsv).
const LIBRARIES: [&str; 3] = ["m", "pthread", "dl"];

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Returns lines for the report (or an error saying how to get the corpus).
pub fn run(dir: &Path, runs: usize) -> Result<Vec<String>, String> {
    let driver_path = dir.join("drivers/sqlite.o");
    let archive_path = dir.join("archives/libsqlite3.a");
    if !driver_path.is_file() || !archive_path.is_file() {
        return Err(format!(
            "no SQLite corpus in {} ({} or {} missing): make it with \
             `tests/corpus/setup.sh {}` (installs Debian's static libraries, as root, and \
             builds the drivers), or pass --corpus DIR",
            dir.display(),
            driver_path.display(),
            archive_path.display(),
            dir.display()
        ));
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let driver = read(&driver_path)?;
    let archive = read(&archive_path)?;
    let mut out = vec![
        format!(
            "SQLite driver: link and remove, {runs} times in one session (after 1 warm-up), \
             median (min) ms; inputs already in memory"
        ),
        format!(
            "  {:<26} {:>14} {:>14} {:>14}",
            "debug sinks", "link", "remove", "link+remove"
        ),
    ];
    // The configurations in one loop, alternating (and reversing their order every run), so
    // that none always gets the cooler or the warmer machine. The third only collects the
    // phase timings (`set_collect_stats` costs, so the first two leave it off).
    let mut configs: Vec<Config> = Vec::new();
    for (label, debug, stats) in [
        ("none", DebugOptions::none(), false),
        ("default (gdb, valgrind)", DebugOptions::default(), false),
        (STATS_LABEL, DebugOptions::none(), true),
    ] {
        let session = Session::in_process();
        session.set_debug(debug);
        session.set_collect_stats(stats);
        for l in LIBRARIES {
            session.add_library(l).map_err(|e| format!("-l{l}: {e}"))?;
        }
        configs.push(Config {
            label,
            session,
            link: Vec::new(),
            remove: Vec::new(),
            both: Vec::new(),
            phases: Vec::new(),
        });
    }
    let mut mem_start = MemSnapshot::default();
    for rep in 0..=runs {
        if rep == 1 {
            mem_start = MemSnapshot::now();
        }
        let n = configs.len();
        for j in 0..n {
            let c = &mut configs[if rep % 2 == 0 { j } else { n - 1 - j }];
            let s = &c.session;
            let (d, a) = (driver.clone(), archive.clone());
            let t0 = Instant::now();
            s.add_object(driver_path.display().to_string(), d);
            s.add_archive(archive_path.display().to_string(), a);
            let unit = s
                .link()
                .map_err(|e| format!("linking the SQLite driver: {e}"))?;
            let t1 = Instant::now();
            let unit_phases = s
                .stats(unit)
                .map(|st| st.phases.clone())
                .unwrap_or_default();
            let t2 = Instant::now();
            s.remove(unit)
                .map_err(|e| format!("removing the SQLite driver: {e}"))?;
            let t3 = Instant::now();
            if rep == 0 {
                continue; // warm-up
            }
            c.link.push(t1 - t0);
            c.remove.push(t3 - t2);
            c.both.push((t1 - t0) + (t3 - t2));
            for (name, d) in unit_phases {
                match c.phases.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(d),
                    None => c.phases.push((name, vec![d])),
                }
            }
        }
    }
    let mem_end = MemSnapshot::now();
    let cell = |v: &mut Vec<Duration>| {
        let min = v.iter().min().copied().unwrap_or_default();
        format!("{:.2} ({:.2})", ms(median(v)), ms(min))
    };
    for c in &mut configs {
        out.push(format!(
            "  {:<26} {:>14} {:>14} {:>14}",
            c.label,
            cell(&mut c.link),
            cell(&mut c.remove),
            cell(&mut c.both),
        ));
    }
    out.push(format!(
        "  process RSS {:.1} MB -> {:.1} MB, mappings {} -> {} (after the warm-up run -> after \
         the last run: flat means removal gives everything back)",
        mem_start.vm_rss as f64 / 1e6,
        mem_end.vm_rss as f64 / 1e6,
        mem_start.mappings,
        mem_end.mappings,
    ));
    let Some(c) = configs.iter_mut().find(|c| c.label == STATS_LABEL) else {
        return Ok(out);
    };
    out.push(
        "  link phases with debug sinks none, from the stats run (Session::stats, median ms):"
            .to_string(),
    );
    let mut line = String::from("   ");
    for (name, v) in &mut c.phases {
        line.push_str(&format!(" {name} {:.3};", ms(median(v))));
    }
    out.push(line.trim_end_matches(';').to_string());
    Ok(out)
}

const STATS_LABEL: &str = "none, stats collected";

struct Config {
    label: &'static str,
    session: Session,
    link: Vec<Duration>,
    remove: Vec<Duration>,
    both: Vec<Duration>,
    phases: Vec<(&'static str, Vec<Duration>)>,
}
