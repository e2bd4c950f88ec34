//! Live packing: which device a queued trial can start on now. The same
//! rule as the plan's simulation (`plan::placement`): the sum of the
//! estimates on a device stays within (1 − headroom) × its memory, the count
//! within `max_trials_per_device`; host slots draw on one shared pool.

use crate::devices::detect::Inventory;
use crate::plan::placement::{Limits, capacity};

#[derive(Clone, Debug)]
struct Slot {
    capacity: u64,
    used: u64,
    running: u32,
}

/// The devices' remaining room.
#[derive(Clone, Debug)]
pub struct Slots {
    devices: Vec<Slot>,
    max_per_device: u32,
    /// Host slots: one pool (capacity, used) for all of them.
    pool: Option<(u64, u64)>,
}

impl Slots {
    pub fn new(inventory: &Inventory, limits: Limits) -> Self {
        let slots: Vec<Slot> = inventory
            .devices
            .iter()
            .map(|d| Slot {
                capacity: capacity(d.total_bytes, d.free_bytes, limits.memory_headroom),
                used: 0,
                running: 0,
            })
            .collect();
        let pool = inventory
            .shared_memory_pool
            .then(|| (slots.iter().map(|s| s.capacity).max().unwrap_or(0), 0));
        // A host slot runs one trial at a time: slots are how the host is split.
        let max_per_device = if inventory.shared_memory_pool {
            1
        } else {
            limits.max_trials_per_device.max(1)
        };
        Slots {
            devices: slots,
            max_per_device,
            pool,
        }
    }

    /// Whether `bytes` would fit on some device with nothing else running.
    pub fn could_ever_fit(&self, bytes: u64) -> bool {
        let pool_ok = self.pool.is_none_or(|(cap, _)| bytes <= cap);
        pool_ok && self.devices.iter().any(|s| bytes <= s.capacity)
    }

    /// The device a trial of `bytes` can start on now: among those with room,
    /// the one with the most left (spreading load), lowest index on ties.
    pub fn choose(&self, bytes: u64) -> Option<usize> {
        if let Some((cap, used)) = self.pool
            && used.saturating_add(bytes) > cap
        {
            return None;
        }
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running < self.max_per_device)
            .filter(|(_, s)| s.used.saturating_add(bytes) <= s.capacity)
            .max_by(|(ia, a), (ib, b)| {
                (a.capacity - a.used)
                    .cmp(&(b.capacity - b.used))
                    .then(ib.cmp(ia))
            })
            .map(|(i, _)| i)
    }

    pub fn take(&mut self, device: usize, bytes: u64) {
        let slot = &mut self.devices[device];
        slot.used = slot.used.saturating_add(bytes);
        slot.running += 1;
        if let Some((_, used)) = &mut self.pool {
            *used = used.saturating_add(bytes);
        }
    }

    pub fn release(&mut self, device: usize, bytes: u64) {
        let slot = &mut self.devices[device];
        slot.used = slot.used.saturating_sub(bytes);
        slot.running = slot.running.saturating_sub(1);
        if let Some((_, used)) = &mut self.pool {
            *used = used.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::detect::resolve;
    use crate::devices::grammar::DeviceRequest;

    const GIB: u64 = 1 << 30;

    fn slots(request: &str, per_device: u32) -> Slots {
        let inventory = resolve(&request.parse::<DeviceRequest>().unwrap()).unwrap();
        Slots::new(
            &inventory,
            Limits {
                memory_headroom: 0.0,
                max_trials_per_device: per_device,
            },
        )
    }

    #[test]
    fn trials_pack_by_memory_and_count_and_spread_across_devices() {
        let mut packing = slots("cuda:2x24GiB", 2);
        assert!(!packing.could_ever_fit(25 * GIB));
        let first = packing.choose(10 * GIB).unwrap();
        packing.take(first, 10 * GIB);
        // The other device has more room now.
        let second = packing.choose(10 * GIB).unwrap();
        assert_ne!(first, second);
        packing.take(second, 10 * GIB);
        // 14 GiB left on each: a 15 GiB trial waits, a 12 GiB one fits.
        assert_eq!(packing.choose(15 * GIB), None);
        let third = packing.choose(12 * GIB).unwrap();
        packing.take(third, 12 * GIB);
        // Two per device: the device with the third is full by count.
        let fourth = packing.choose(GIB).unwrap();
        assert_ne!(fourth, third);
        packing.take(fourth, GIB);
        assert_eq!(packing.choose(GIB), None);
        packing.release(third, 12 * GIB);
        assert_eq!(packing.choose(13 * GIB), Some(third));
    }

    #[test]
    fn host_slots_share_one_pool() {
        let mut packing = slots("cpu:4", 1);
        let total = packing.pool.unwrap().0;
        let first = packing.choose(total / 2).unwrap();
        packing.take(first, total / 2);
        let second = packing.choose(total / 2).unwrap();
        packing.take(second, total / 2);
        // Slots are free, the pool is not.
        assert_eq!(packing.choose(1), None);
        packing.release(first, total / 2);
        assert!(packing.choose(1).is_some());
    }
}
