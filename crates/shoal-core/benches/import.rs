//! Import speed: Shoal's parallel per-piece hashing against plain BLAKE3 of the same file,
//! single- and multi-threaded, measured in one run.
//!
//! `cargo bench -p shoal-core --bench import -- [SIZE_MIB] [ROUNDS]` (defaults 1024 and 3).
//! The file is written to a temp dir and read once beforehand, so every variant reads from the
//! page cache; the figure is the best of ROUNDS.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Instant;

fn best_of(rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mib: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.bin");
    {
        let mut f = File::create(&path).unwrap();
        let mut block = vec![0u8; 1 << 20];
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..mib {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Warm the page cache.
    let mut sink = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut sink).unwrap();
    drop(sink);

    let single = best_of(rounds, || {
        let mut h = blake3::Hasher::new();
        let mut f = File::open(&path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::hint::black_box(h.finalize());
    });
    let multi = best_of(rounds, || {
        let mut h = blake3::Hasher::new();
        h.update_mmap_rayon(&path).unwrap();
        std::hint::black_box(h.finalize());
    });
    let shoal = best_of(rounds, || {
        let f = File::open(&path).unwrap();
        let hashes = shoal_core::hash::hash_pieces(
            size,
            threads,
            |off, buf| f.read_exact_at(buf, off),
            |_| {},
        )
        .unwrap();
        std::hint::black_box(hashes);
    });
    let rate = |s: f64| size as f64 / s / (1024.0 * 1024.0);
    println!("import benchmark: {mib} MiB file, {threads} threads, best of {rounds}");
    println!(
        "{:<40} {:>8.3} s {:>9.0} MiB/s",
        "blake3 single-threaded (read + update)",
        single,
        rate(single)
    );
    println!(
        "{:<40} {:>8.3} s {:>9.0} MiB/s",
        "blake3 multi-threaded (mmap + rayon)",
        multi,
        rate(multi)
    );
    println!(
        "{:<40} {:>8.3} s {:>9.0} MiB/s",
        "shoal import (parallel per-piece)",
        shoal,
        rate(shoal)
    );
    println!("ratio shoal / blake3 multi-threaded: {:.2}", multi / shoal);
    println!("ratio shoal / blake3 single-threaded: {:.2}", single / shoal);
}
