//! Helpers shared by the benchmarks.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `mib` MiB of pseudo-random bytes.
pub fn write_file(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..mib {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// Starts `shoal daemon` on loopback; returns it and its first stdout line.
pub fn daemon(dir: &Path, extra: &[&str]) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["daemon", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("SHOAL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    (Killed(child), first)
}

/// Runs `shoal --data-dir DIR ARGS..` to completion; returns stdout.
pub fn shoal(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN).arg("--data-dir").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
