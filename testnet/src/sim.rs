//! `shoal-testnet sim`: the swarm simulation of `shoal-sim` (every node's real `PeerSet` and
//! `Uploader`, the real tracker index, simulated time), printed as a table or JSON.

use std::time::Duration;

use anyhow::{bail, Context};
use shoal_sim::{Outcome, Scenario};

/// The simulation's parameters.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Downloaders (one seed comes on top).
    #[arg(long, env = "SHOAL_SIM_NODES", default_value_t = 1000)]
    nodes: usize,
    /// Fraction of downloaders whose uplink is a quarter of --uplink.
    #[arg(long, env = "SHOAL_SIM_SLOW_FRACTION", default_value_t = 0.25)]
    slow_fraction: f64,
    /// Fraction of downloaders that leave mid-download and come back.
    #[arg(long, env = "SHOAL_SIM_CHURN", default_value_t = 0.1)]
    churn: f64,
    /// File size, like 32MiB.
    #[arg(long, env = "SHOAL_SIM_FILE_SIZE", default_value = "32MiB")]
    file_size: String,
    /// Piece size, like 256KiB (default: the node's rule for the file size).
    #[arg(long, env = "SHOAL_SIM_PIECE_SIZE")]
    piece_size: Option<String>,
    /// The seed's and the fast downloaders' uplink, like 2MiB/s.
    #[arg(long, env = "SHOAL_SIM_UPLINK", default_value = "2MiB/s")]
    uplink: String,
    /// One-way latency between nodes, in milliseconds.
    #[arg(long, env = "SHOAL_SIM_LATENCY_MS", default_value_t = 10)]
    latency_ms: u64,
    /// Seed of every random choice (the same seed gives the same outcome).
    #[arg(long, env = "SHOAL_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Piece hints the tracker hands each asker (0: no differential distribution)
    #[arg(long, env = "SHOAL_SIM_HINTS", default_value_t = 32)]
    hints: usize,
    /// The seed shows its whole bitfield at once instead of revealing pieces a few at a time
    #[arg(long, env = "SHOAL_SIM_NO_SUPER_SEED")]
    no_super_seed: bool,
    /// Once every piece left the seed, it shows everything at once instead of guarding its
    /// first copy (showing only pieces whose recipients all left)
    #[arg(long, env = "SHOAL_SIM_NO_GUARD")]
    no_guard: bool,
    /// Print the outcome as JSON (with every downloader's finish).
    #[arg(long)]
    json: bool,
}

/// Runs the simulation and prints its outcome.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let scenario = Scenario {
        nodes: args.nodes,
        uplink: parse_bytes(args.uplink.trim_end_matches("/s")).context("--uplink")?,
        slow_fraction: args.slow_fraction,
        file_size: parse_bytes(&args.file_size).context("--file-size")?,
        piece_size: args
            .piece_size
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .context("--piece-size")?,
        latency: Duration::from_millis(args.latency_ms),
        churn: args.churn,
        seed: args.seed,
        hints: args.hints,
        super_seed: !args.no_super_seed,
        guard: !args.no_guard,
        record: Vec::new(),
    };
    let out = shoal_sim::run(&scenario).context("simulating the swarm")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&scenario, &out);
    }
    Ok(())
}

fn print_table(s: &Scenario, o: &Outcome) {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "{} downloaders + 1 seed, {:.0} MiB in {} pieces of {} KiB, uplink {:.2} MiB/s ({:.0}% at a quarter), latency {} ms, churn {:.0}%, seed {}",
        o.nodes,
        mib(s.file_size as f64),
        o.pieces,
        o.piece_size / 1024,
        mib(s.uplink as f64),
        s.slow_fraction * 100.0,
        s.latency.as_millis(),
        s.churn * 100.0,
        s.seed
    );
    println!("last finish (stayers)  {:>9.2} s", o.last_finish_s);
    println!("mean finish (stayers)  {:>9.2} s", o.mean_finish_s);
    println!("fluid bound            {:>9.2} s", o.bound_s);
    println!("ratio to the bound     {:>9.3}", o.ratio);
    println!("seed copies            {:>9.3}", o.seed_copies);
    println!("seed sent every piece  {:>9.2} s", o.seed_all_sent_s);
    println!("busy answers           {:>9}", o.busy);
    println!("last finish (all)      {:>9.2} s  ({} churned)", o.last_finish_all_s, o.churned);
    println!("bytes uploaded / needed{:>9.3}", o.upload_overhead);
    println!("events                 {:>9}", o.events);
    println!("wall time              {:>9.2} s", o.wall_s);
}

/// `32MiB`, `2MB`, `512KiB`, `1048576`: a byte count.
fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("{s:?} is not a size like 32MiB"))?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, kB, MB, GB)"),
    };
    Ok((n * mul) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_bytes("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("2MB").unwrap(), 2_000_000);
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
