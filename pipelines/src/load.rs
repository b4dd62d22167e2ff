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
    Load::new(spec).collect()
}

/// The commands of a [`LoadSpec`], one at a time: [`generate`] collects them; a soak of
/// millions streams them ([`produce_stream`]) instead of holding them all.
pub struct Load {
    spec: LoadSpec,
    rng: Rng,
    warehouses: &'static [&'static str],
    /// Open reservation ids per sku (what a release may name).
    reservations: Vec<Vec<String>>,
    base_time: i64,
    spacing_ms: i64,
    /// Releases as many as reservations (a soak whose open reservations do not pile up).
    balanced: bool,
    i: usize,
}

impl Load {
    pub fn new(spec: &LoadSpec) -> Self {
        Load {
            spec: *spec,
            rng: Rng(spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            warehouses: &WAREHOUSES[..spec.warehouses.clamp(1, WAREHOUSES.len())],
            reservations: vec![Vec::new(); spec.skus.max(1)],
            base_time: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            spacing_ms: 10,
            balanced: false,
            i: 0,
        }
    }

    /// Releases (30%) outpacing reservations (25%), each naming an open reservation when
    /// there is one, so that the open reservations of a long run stay level, as a business's
    /// do; by default reservations outnumber releases two to one.
    pub fn balanced(mut self) -> Self {
        self.balanced = true;
        self
    }

    /// Commands `ms` apart in event time (10 ms by default).
    pub fn spaced(mut self, ms: i64) -> Self {
        self.spacing_ms = ms;
        self
    }
}

impl Iterator for Load {
    type Item = InventoryCommand;

    fn next(&mut self) -> Option<InventoryCommand> {
        if self.i >= self.spec.commands {
            return None;
        }
        let i = self.i;
        self.i += 1;
        let warehouses = self.warehouses;
        Some({
            let s = self.rng.below(self.spec.skus.max(1) as u64) as usize;
            let sku = format!("SKU-{:05}", self.spec.first_sku + s);
            let w = warehouses[self.rng.below(warehouses.len() as u64) as usize].to_owned();
            let metadata = Metadata::command(
                &format!("{:016x}-{i}", self.spec.seed),
                &sku,
                self.base_time + i as i64 * self.spacing_ms,
            );
            let q = self.rng.below(20) as i64 + 1;
            let roll = self.rng.below(100);
            // Balanced: 0..30 receive, 30..55 reserve, 55..85 release (an open one whenever the
            // sku has one: releases outpace reservations, so open ones stay level rather than
            // wander up), 85..90 adjust, 90..95 transfer, 95..100 audit.
            let roll = match (self.balanced, roll) {
                (true, 30..55) => 40,
                (true, 55..85) => 70,
                (true, 85..90) => 80,
                (true, 90..95) => 90,
                (_, r) => r,
            };
            match roll {
                0..35 => ReceiveStock {
                    metadata,
                    sku,
                    warehouse: w,
                    quantity: q * 3,
                }
                .into(),
                35..65 => {
                    let id = format!("R-{i}");
                    self.reservations[s].push(id.clone());
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
                    let known = &mut self.reservations[s];
                    let id = if known.is_empty() || (!self.balanced && self.rng.below(10) == 0) {
                        format!("R-unknown-{i}")
                    } else {
                        let k = self.rng.below(known.len() as u64) as usize;
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
                    let delta = if self.rng.below(2) == 0 { -q } else { q };
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
                    let to =
                        warehouses[self.rng.below(warehouses.len() as u64) as usize].to_owned();
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
    }
}

/// Produces `commands` to `inventory.commands`, keyed by sku, and waits for delivery.
pub async fn produce_commands(
    cluster: &Cluster,
    commands: &[InventoryCommand],
) -> anyhow::Result<()> {
    // Owned: the producer runs on a blocking thread of its own.
    let owned: Vec<InventoryCommand> = commands.to_vec();
    produce_stream(cluster, owned.into_iter()).await?;
    Ok(())
}

/// Produces what `commands` yields to `inventory.commands`, keyed by sku, encoding each as it
/// comes (nothing held: a soak's ten million), and waits for delivery. Returns how many.
pub async fn produce_stream(
    cluster: &Cluster,
    commands: impl Iterator<Item = InventoryCommand> + Send + 'static,
) -> anyhow::Result<usize> {
    let registry = Registry::new(&cluster.registry);
    let encoder = Encoder::<InventoryCommand>::register(&registry, COMMANDS).await?;
    let plain = Cluster {
        guarantee: Guarantee::AtLeastOnce,
        ..cluster.clone()
    };
    tokio::task::spawn_blocking(move || {
        let output = Output::new(&plain, "producer", "load")?;
        let mut buf = Vec::with_capacity(256);
        let mut n = 0;
        for c in commands {
            encoder.encode_into(&c, &mut buf)?;
            output.send(COMMANDS, None, c.sku().as_bytes(), &buf, None)?;
            n += 1;
        }
        output.flush()?;
        Ok(n)
    })
    .await
    .context("producer thread")?
}
