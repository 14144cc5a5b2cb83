//! Pod addresses from the node's pod CIDR, one file per address under
//! `DATA_DIR/network/ips/` holding the pod's uid (as CNI's host-local
//! plugin keeps them). A file is created with `O_EXCL`, so an address is
//! never held by two pods, also across agent restarts; allocation goes
//! round from the last address handed out, so a freed address is not
//! reused at once (a peer may still have it in a cache).

use std::fs;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

const LAST_FILE: &str = "last";

pub struct PodIpam {
    dir: PathBuf,
    cidr: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address is left in the node's pod CIDR {0}: remove pods or give nodes larger CIDRs (--node-cidr-size on the controllers)")]
    Exhausted(Ipv4Net),
    #[error("pod address records in {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

impl PodIpam {
    pub fn new(dir: PathBuf, cidr: Ipv4Net) -> Result<Self, IpamError> {
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            dir: dir.clone(),
            source,
        })?;
        Ok(Self { dir, cidr })
    }

    /// The gateway: the first address, held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        first_host(&self.cidr)
    }

    fn io(&self, source: io::Error) -> IpamError {
        IpamError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Addresses held now, with their pods' uids.
    pub fn held(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| self.io(e))?.flatten() {
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            if let Ok(uid) = fs::read_to_string(entry.path()) {
                out.push((ip, uid));
            }
        }
        Ok(out)
    }

    /// The pod's address: the one it holds, or a new one.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self
            .held()?
            .into_iter()
            .find(|(ip, u)| u == uid && self.cidr.contains(ip))
        {
            return Ok(ip);
        }
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.cidr.broadcast()) - 1;
        if first > last {
            return Err(IpamError::Exhausted(self.cidr));
        }
        let after = fs::read_to_string(self.dir.join(LAST_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|a| (first..=last).contains(a))
            .unwrap_or(last);
        let span = last - first + 1;
        for step in 1..=span {
            let candidate = Ipv4Addr::from(first + (after - first + step) % span);
            let file = self.dir.join(candidate.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&file) {
                Ok(mut f) => {
                    f.write_all(uid.as_bytes()).map_err(|e| self.io(e))?;
                    f.sync_all().map_err(|e| self.io(e))?;
                    let _ = fs::write(self.dir.join(LAST_FILE), candidate.to_string());
                    return Ok(candidate);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Frees whatever the pod holds.
    pub fn release(&self, uid: &str) -> Result<(), IpamError> {
        for (ip, _) in self.held()?.into_iter().filter(|(_, u)| u == uid) {
            match fs::remove_file(self.dir.join(ip.to_string())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(self.io(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

pub fn first_host(cidr: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &tempfile::TempDir, cidr: &str) -> PodIpam {
        PodIpam::new(dir.path().join("ips"), cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_pod_keeps_its_address_and_no_address_is_held_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(&dir, "10.244.3.0/29");
        assert_eq!(ipam.gateway(), "10.244.3.1".parse::<Ipv4Addr>().unwrap());
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a.to_string(), "10.244.3.2");
        assert_eq!(ipam.allocate("a").unwrap(), a);
        let mut seen = vec![a];
        for uid in ["b", "c", "d", "e"] {
            let ip = ipam.allocate(uid).unwrap();
            assert!(!seen.contains(&ip), "{ip} handed out twice");
            seen.push(ip);
        }
        assert!(matches!(ipam.allocate("f"), Err(IpamError::Exhausted(_))));
        ipam.release("c").unwrap();
        let f = ipam.allocate("f").unwrap();
        assert_eq!(f, seen[2], "the only free address is the released one");
    }

    #[test]
    fn allocation_goes_round_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(&dir, "10.244.3.0/24");
        let a = first.allocate("a").unwrap();
        first.release("a").unwrap();
        let again = ipam(&dir, "10.244.3.0/24");
        let b = again.allocate("b").unwrap();
        assert_ne!(a, b, "a freed address is not reused at once");
        assert_eq!(again.held().unwrap(), vec![(b, "b".to_string())]);
    }
}
