//! A seeded generator of realistic inventory commands, and a fast producer for them.
//!
//! The mix (receipts, reservations, releases of known and unknown reservations, adjustments,
//! transfers, counts) exercises every rule, including rejections. The same seed always gives
//! the same commands, so tests can compute the expected outcome independently.

use anyhow::Context;
use schemas::Registry;
use schemas::codec::Encoder;
use schemas::inventory::*;

use crate::kafka::Output;
use crate::topics::inventory::COMMANDS;
use crate::{Cluster, Guarantee};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub commands: usize,
    pub skus: usize,
    pub warehouses: usize,
    pub seed: u64,
    /// Number of the first sku (`SKU-<first_sku>`…), so that runs on one cluster can keep
    /// their skus apart.
    pub first_sku: usize,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            commands: 5_000,
            skus: 50,
            warehouses: 4,
            seed: 42,
            first_sku: 0,
        }
    }
}

/// xorshift64*: tiny, fast and reproducible.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Warehouse codes used by the generator.
pub const WAREHOUSES: [&str; 8] = ["AMS", "BER", "CDG", "MAD", "MXP", "WAW", "DUB", "LIS"];

/// Generates `spec.commands` commands.
pub fn generate(spec: &LoadSpec) -> Vec<InventoryCommand> {
    let mut rng = Rng(spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let warehouses = &WAREHOUSES[..spec.warehouses.clamp(1, WAREHOUSES.len())];
    let mut reservations: Vec<Vec<String>> = vec![Vec::new(); spec.skus.max(1)];
    let base_time = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    (0..spec.commands)
        .map(|i| {
            let s = rng.below(spec.skus.max(1) as u64) as usize;
            let sku = format!("SKU-{:05}", spec.first_sku + s);
            let w = warehouses[rng.below(warehouses.len() as u64) as usize].to_owned();
            let metadata = Metadata::command(
                &format!("{:016x}-{i}", spec.seed),
                &sku,
                base_time + i as i64 * 10,
            );
            let q = rng.below(20) as i64 + 1;
            match rng.below(100) {
                0..35 => ReceiveStock {
                    metadata,
                    sku,
                    warehouse: w,
                    quantity: q * 3,
                }
                .into(),
                35..65 => {
                    let id = format!("R-{i}");
                    reservations[s].push(id.clone());
                    ReserveStock {
                        metadata,
                        reservation_id: id,
                        sku,
                        warehouse: w,
                        quantity: q,
                    }
                    .into()
                }
                65..80 => {
                    let known = &mut reservations[s];
                    let id = if known.is_empty() || rng.below(10) == 0 {
                        format!("R-unknown-{i}")
                    } else {
                        let k = rng.below(known.len() as u64) as usize;
                        known.swap_remove(k)
                    };
                    ReleaseReservation {
                        metadata,
                        reservation_id: id,
                        sku,
                    }
                    .into()
                }
                80..88 => {
                    let delta = if rng.below(2) == 0 { -q } else { q };
                    AdjustStock {
                        metadata,
                        sku,
                        warehouse: w,
                        delta,
                        reason: "cycle correction".into(),
                    }
                    .into()
                }
                88..95 => {
                    let to = warehouses[rng.below(warehouses.len() as u64) as usize].to_owned();
                    let to = if to == w { format!("{w}-2") } else { to };
                    TransferStock {
                        metadata,
                        sku,
                        from_warehouse: w,
                        to_warehouse: to,
                        quantity: q,
                    }
                    .into()
                }
                _ => AuditStock {
                    metadata,
                    sku,
                    warehouse: w,
                    counted: q * 4,
                }
                .into(),
            }
        })
        .collect()
}

/// Produces `commands` to `inventory.commands`, keyed by sku, and waits for delivery.
pub async fn produce_commands(
    cluster: &Cluster,
    commands: &[InventoryCommand],
) -> anyhow::Result<()> {
    let registry = Registry::new(&cluster.registry);
    let encoder = Encoder::<InventoryCommand>::register(&registry, COMMANDS).await?;
    let plain = Cluster {
        guarantee: Guarantee::AtLeastOnce,
        ..cluster.clone()
    };
    let commands = commands.to_vec();
    tokio::task::spawn_blocking(move || {
        let output = Output::new(&plain, "producer", "load")?;
        let mut buf = Vec::with_capacity(256);
        for c in &commands {
            encoder.encode_into(c, &mut buf)?;
            output.send(COMMANDS, None, c.sku().as_bytes(), &buf, None)?;
        }
        output.flush()
    })
    .await
    .context("producer thread")?
}
