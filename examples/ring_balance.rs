//! How evenly the hash ring spreads rooms, and how many move when a node joins or leaves,
//! for several numbers of virtual nodes per member: the measurement behind
//! `tandem::cluster::ring::VNODES`. Also the owner lookup time.
//!
//!   cargo run --release --example ring_balance [ROOMS]

use std::collections::HashMap;
use std::time::Instant;

use tandem::cluster::ring::{Ring, VNODES};
use tandem::id::NodeId;

fn nodes(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| NodeId::parse(&format!("node-{i}")).unwrap())
        .collect()
}

fn main() {
    let rooms: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let names: Vec<String> = (0..rooms).map(|i| format!("room-{i}")).collect();
    println!("| points per node | nodes | max/mean rooms per node | moved on join (1/(N+1)) | moved on leave (1/N) |");
    println!("|---|---|---|---|---|");
    for vnodes in [64, 128, 256, 512] {
        for n in [3, 10, 20] {
            let ring = Ring::with_vnodes(nodes(n), vnodes);
            let mut load: HashMap<&NodeId, usize> = HashMap::new();
            for name in &names {
                *load.entry(ring.owner_of(name).unwrap()).or_default() += 1;
            }
            let max = *load.values().max().unwrap() as f64;
            let mean = rooms as f64 / n as f64;
            let joined = Ring::with_vnodes(nodes(n + 1), vnodes);
            let left = Ring::with_vnodes(nodes(n - 1), vnodes);
            let moved = |other: &Ring| {
                names
                    .iter()
                    .filter(|r| ring.owner_of(r) != other.owner_of(r))
                    .count() as f64
                    / rooms as f64
            };
            println!(
                "| {vnodes}{} | {n} | {:.3} | {:.3} ({:.3}) | {:.3} ({:.3}) |",
                if vnodes == VNODES { " (chosen)" } else { "" },
                max / mean,
                moved(&joined),
                1.0 / (n + 1) as f64,
                moved(&left),
                1.0 / n as f64
            );
        }
    }
    let ring = Ring::new(nodes(10));
    let started = Instant::now();
    let mut hits = 0usize;
    for name in &names {
        hits += usize::from(ring.owner_of(name).is_some());
    }
    let per = started.elapsed().as_nanos() as f64 / rooms as f64;
    println!("\nowner lookup, 10 nodes × {VNODES} points: {per:.0} ns ({hits} lookups)");
}
