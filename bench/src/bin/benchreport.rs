//! `benchreport RUNS.CSV`: prints the Markdown summary of a bench run (see
//! `bench::report`). scripts/bench.sh calls it at the end of a run; run it by
//! hand to re-render an old `bench/results/<timestamp>/runs.csv`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: benchreport RUNS.CSV");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("benchreport: {path}: {e}");
            return ExitCode::from(1);
        }
    };
    match bench::report::parse_csv(&text) {
        Ok(runs) => {
            print!("{}", bench::report::render(&runs));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchreport: {path}: {e}");
            ExitCode::from(1)
        }
    }
}
