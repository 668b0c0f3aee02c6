//! Pod address allocation from the node agent's pod CIDR.
//!
//! Addresses are handed out round-robin (the next free one after the last given) rather than
//! lowest-free, so a just-released address is not reused at once: a lagging service proxy could
//! otherwise route a connection meant for a deleted pod to its successor.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// An IPv4 CIDR such as `10.88.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected A.B.C.D/N"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s:?}: prefix must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl Cidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

/// Allocates host addresses of a CIDR, skipping the network, broadcast and gateway addresses.
#[derive(Debug)]
pub struct Ipam {
    cidr: Cidr,
    gateway: Ipv4Addr,
    used: BTreeSet<u32>,
    /// Offset of the last address handed out.
    last: u32,
}

impl Ipam {
    pub fn new(cidr: Cidr, gateway: Ipv4Addr) -> Self {
        Ipam {
            cidr,
            gateway,
            used: BTreeSet::new(),
            last: 0,
        }
    }

    /// The next free address and its offset in the CIDR (used to name the pod's netns),
    /// or None when the CIDR is exhausted.
    pub fn allocate(&mut self) -> Option<(Ipv4Addr, u32)> {
        let size = self.cidr.size();
        let base = u32::from(self.cidr.network);
        for step in 1..size {
            let offset = (self.last + step) % size;
            let ip = Ipv4Addr::from(base + offset);
            if offset == 0
                || offset == size - 1
                || ip == self.gateway
                || self.used.contains(&offset)
            {
                continue;
            }
            self.used.insert(offset);
            self.last = offset;
            return Some((ip, offset));
        }
        None
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.cidr.network));
        self.used.remove(&offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam() -> Ipam {
        Ipam::new("10.88.0.0/29".parse().unwrap(), Ipv4Addr::new(10, 88, 0, 1))
    }

    #[test]
    fn parses_and_masks() {
        let c: Cidr = "10.88.0.7/24".parse().unwrap();
        assert_eq!(c.network, Ipv4Addr::new(10, 88, 0, 0));
        assert!(c.contains(Ipv4Addr::new(10, 88, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 88, 1, 1)));
        assert!("10.88.0.0".parse::<Cidr>().is_err());
        assert!("10.88.0.0/31".parse::<Cidr>().is_err());
    }

    #[test]
    fn skips_network_gateway_broadcast_and_exhausts() {
        let mut ipam = ipam();
        let got: Vec<_> = std::iter::from_fn(|| ipam.allocate())
            .map(|(ip, _)| ip)
            .collect();
        let want: Vec<_> = (2..=6).map(|d| Ipv4Addr::new(10, 88, 0, d)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let mut ipam = ipam();
        let (a, _) = ipam.allocate().unwrap();
        ipam.release(a);
        let (b, _) = ipam.allocate().unwrap();
        assert_ne!(a, b);
        // once the others are taken, the released one comes back
        let rest: Vec<_> = std::iter::from_fn(|| ipam.allocate())
            .map(|(ip, _)| ip)
            .collect();
        assert!(rest.contains(&a));
    }
}
