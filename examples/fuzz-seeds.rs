//! Write the fuzz seed corpora: `cargo run --example fuzz-seeds -- fuzz/seeds`.
//! Each seed is recorded from real traffic through the server (see `understudy::fuzzing::seeds`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let seeds = understudy::fuzzing::seeds::all();
    for s in &seeds {
        let dir = root.join(s.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&s.name), &s.bytes)?;
    }
    println!("{} seeds written under {}", seeds.len(), root.display());
    Ok(())
}
