//! `benchreport RUNS.CSV [--svg DIR]`: prints the Markdown summary of a
//! bench run (see `bench::report`); with `--svg DIR`, also writes
//! `DIR/cpu.svg` (proxy CPU per unit) and `DIR/throughput.svg`, one bar per
//! proxy and workload with min..max whiskers (see `bench::chart`).
//! scripts/bench.sh calls it at the end of a run; run it by hand to
//! re-render an old `bench/results/<timestamp>/runs.csv`.

use std::path::PathBuf;
use std::process::ExitCode;

use bench::chart::{self, Metric};

const USAGE: &str = "usage: benchreport RUNS.CSV [--svg DIR]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, svg_dir) = match args.as_slice() {
        [path] => (path, None),
        [path, flag, dir] if flag == "--svg" => (path, Some(PathBuf::from(dir))),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("benchreport: {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let runs = match bench::report::parse_csv(&text) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("benchreport: {path}: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", bench::report::render(&runs));
    if let Some(dir) = svg_dir {
        let cells = bench::report::aggregate(&runs);
        let caption = format!("{path}, {} runs", runs.len());
        for (file, metric) in [
            ("cpu.svg", Metric::CpuPerUnit),
            ("throughput.svg", Metric::Throughput),
        ] {
            let out = dir.join(file);
            if let Err(e) = std::fs::write(&out, chart::svg(&cells, metric, &caption)) {
                eprintln!("benchreport: writing {}: {e}", out.display());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
