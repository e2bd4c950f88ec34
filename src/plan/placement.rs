//! Packing trials onto devices: largest estimated memory first, each onto
//! the device with the most room, while the sum of estimates stays within
//! (1 − headroom) × memory and the count within `max_trials_per_device`.
//! The plan simulates the whole sweep with relative cost as duration, so it
//! can say which device each trial would start on and when.

use crate::devices::detect::Inventory;

/// What placement needs to know of a trial.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Demand {
    pub memory_bytes: u64,
    /// Relative cost, used as the simulated duration.
    pub cost: f64,
}

/// Where and when (in relative-cost units) a trial would start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slot {
    pub device: usize,
    pub start: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// Per trial, in input order; `None` when it fits on no device.
    pub slots: Vec<Option<Slot>>,
    /// When the last trial would finish.
    pub makespan: f64,
    /// Memory each device may hand out (after headroom); for host slots, the
    /// shared pool.
    pub capacity_bytes: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub memory_headroom: f64,
    pub max_trials_per_device: u32,
}

/// Memory a device may hand out: its total less the headroom, and never
/// more than was free when it was detected.
pub fn capacity(total: u64, free: u64, headroom: f64) -> u64 {
    ((total as f64 * (1.0 - headroom)) as u64).min(free)
}

pub fn place(demands: &[Demand], inventory: &Inventory, limits: Limits) -> Placement {
    let capacities: Vec<u64> = inventory
        .devices
        .iter()
        .map(|d| capacity(d.total_bytes, d.free_bytes, limits.memory_headroom))
        .collect();
    // Host slots share one pool: its capacity is one device's capacity.
    let pool = inventory
        .shared_memory_pool
        .then(|| capacities.iter().copied().max().unwrap_or(0));

    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| demands[b].memory_bytes.cmp(&demands[a].memory_bytes));

    let mut slots: Vec<Option<Slot>> = vec![None; demands.len()];
    let mut queue: Vec<usize> = order
        .into_iter()
        .filter(|&i| capacities.iter().any(|&c| demands[i].memory_bytes <= c))
        .collect();
    // (end time, device, trial)
    let mut running: Vec<(f64, usize, usize)> = Vec::new();
    let mut now = 0.0_f64;
    let mut makespan = 0.0_f64;

    while !queue.is_empty() {
        let mut started_any = false;
        queue.retain(|&trial| {
            let demand = demands[trial];
            let used = |device: usize| -> (u64, u32) {
                running
                    .iter()
                    .filter(|(_, d, _)| *d == device)
                    .fold((0, 0), |(m, n), (_, _, t)| {
                        (m + demands[*t].memory_bytes, n + 1)
                    })
            };
            let pool_used: u64 = running
                .iter()
                .map(|(_, _, t)| demands[*t].memory_bytes)
                .sum();
            let best = (0..capacities.len())
                .filter(|&d| {
                    let (mem, count) = used(d);
                    count < limits.max_trials_per_device
                        && mem + demand.memory_bytes <= capacities[d]
                        && pool.is_none_or(|p| pool_used + demand.memory_bytes <= p)
                })
                // Spread: fewest running trials, then most free memory.
                .min_by_key(|&d| {
                    let (mem, count) = used(d);
                    (
                        count,
                        std::cmp::Reverse(capacities[d].saturating_sub(mem)),
                        d,
                    )
                });
            match best {
                Some(device) => {
                    slots[trial] = Some(Slot { device, start: now });
                    let end = now + demand.cost.max(f64::MIN_POSITIVE);
                    makespan = makespan.max(end);
                    running.push((end, device, trial));
                    started_any = true;
                    false
                }
                None => true,
            }
        });
        if queue.is_empty() {
            break;
        }
        // Advance to the next finish.
        let Some(next) = running
            .iter()
            .map(|(end, _, _)| *end)
            .min_by(f64::total_cmp)
        else {
            // Nothing running and nothing startable: cannot happen for
            // trials that fit an empty device, but never loop forever.
            debug_assert!(
                started_any,
                "a fitting trial could not start on empty devices"
            );
            break;
        };
        now = next;
        running.retain(|(end, _, _)| *end > now);
    }
    Placement {
        slots,
        makespan,
        capacity_bytes: capacities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::detect::{Device, DeviceKind, InventorySource};

    const GIB: u64 = 1 << 30;

    fn gpus(sizes: &[u64]) -> Inventory {
        Inventory {
            devices: sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| Device {
                    kind: DeviceKind::Cuda,
                    label: format!("cuda:{i}"),
                    index: i as u32,
                    name: "test".into(),
                    uuid: None,
                    total_bytes: s * GIB,
                    free_bytes: s * GIB,
                    threads: None,
                })
                .collect(),
            source: InventorySource::Hypothetical,
            shared_memory_pool: false,
        }
    }

    fn demand(gib: u64) -> Demand {
        Demand {
            memory_bytes: gib * GIB,
            cost: 1.0,
        }
    }

    #[test]
    fn spreads_then_queues() {
        let limits = Limits {
            memory_headroom: 0.0,
            max_trials_per_device: 1,
        };
        let p = place(
            &[demand(10), demand(20), demand(5)],
            &gpus(&[24, 24]),
            limits,
        );
        let slot = |i: usize| p.slots[i].unwrap();
        // Largest first: 20 GiB → cuda:0, 10 GiB → cuda:1, 5 GiB waits.
        assert_eq!((slot(1).device, slot(1).start), (0, 0.0));
        assert_eq!((slot(0).device, slot(0).start), (1, 0.0));
        assert!((slot(2).start - 1.0).abs() < 1e-9);
        assert!((p.makespan - 2.0).abs() < 1e-9);
    }

    #[test]
    fn packs_several_per_device_within_memory() {
        let limits = Limits {
            memory_headroom: 0.1,
            max_trials_per_device: 4,
        };
        // 80 GiB × 0.9 = 72 GiB: three 20 GiB trials fit at once, the fourth waits.
        let p = place(&[demand(20); 4], &gpus(&[80]), limits);
        let starts: Vec<f64> = p.slots.iter().map(|s| s.unwrap().start).collect();
        assert_eq!(starts.iter().filter(|s| **s == 0.0).count(), 3);
    }

    #[test]
    fn a_trial_too_large_for_every_device_gets_no_slot() {
        let limits = Limits {
            memory_headroom: 0.1,
            max_trials_per_device: 1,
        };
        let p = place(&[demand(30), demand(10)], &gpus(&[24, 24]), limits);
        assert_eq!(p.slots[0], None);
        assert!(p.slots[1].is_some());
    }

    #[test]
    fn host_slots_share_one_memory_pool() {
        let mut inventory = gpus(&[16, 16]);
        inventory.shared_memory_pool = true;
        let limits = Limits {
            memory_headroom: 0.0,
            max_trials_per_device: 1,
        };
        // Two slots but 10 + 10 GiB exceed the shared 16 GiB: they run one after the other.
        let p = place(&[demand(10), demand(10)], &inventory, limits);
        let starts: Vec<f64> = p.slots.iter().map(|s| s.unwrap().start).collect();
        assert!(starts.contains(&0.0) && starts.contains(&1.0));
    }
}
