//! Run the pair simulator over many seeds (issue "Deterministic simulation of the pair").
//!
//!   cargo run --release --example sim -- [SEEDS] [FIRST]    random seeds FIRST.. (default 100, 1)
//!   cargo run --release --example sim -- --seed S           one seed, with its trace
//!
//! A failing seed is printed with its shrunk fault schedule and the trace of the run; add
//! it to the regression seeds in `src/sim/tests.rs`.

use std::time::Instant;

use understudy::sim::run::{run, schedule, shrink};

fn main() {
    // `RUST_LOG=understudy=debug`: the nodes' own logs (both nodes interleaved) with the trace.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, seed] = args.as_slice()
        && flag == "--seed"
    {
        let seed: u64 = seed.parse().unwrap_or(1);
        let faults = schedule(seed);
        let r = run(seed, &faults);
        for l in &r.trace {
            println!("  {l}");
        }
        println!(
            "seed {seed}: {} calls placed, {} answered, {} role changes, violations: {:?}",
            r.placed, r.answered, r.role_changes, r.violations
        );
        std::process::exit(i32::from(!r.violations.is_empty()));
    }
    if let [flag, seed] = args.as_slice()
        && flag == "--clean"
    {
        let seed: u64 = seed.parse().unwrap_or(1);
        let r = run(seed, &[]);
        println!("seed {seed} without faults: violations {:?}", r.violations);
        return;
    }
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100);
    let first: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let t0 = Instant::now();
    let mut failed = 0;
    let (mut placed, mut answered) = (0, 0);
    for seed in first..first + n {
        let faults = schedule(seed);
        let r = run(seed, &faults);
        placed += r.placed;
        answered += r.answered;
        if !r.violations.is_empty() {
            failed += 1;
            let minimal = shrink(seed, &faults);
            println!("FAILED seed {seed}: {:?}", r.violations);
            println!("  minimal schedule: {minimal:?}");
            let again = run(seed, &minimal);
            for l in again.trace.iter().take(40) {
                println!("  {l}");
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{n} seeds ({first}..{}), {failed} failed, {placed} calls placed, {answered} answered, \
         {secs:.1} s, {:.1} seeds/s",
        first + n - 1,
        n as f64 / secs
    );
    std::process::exit(i32::from(failed > 0));
}
