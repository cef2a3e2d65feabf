//! Host ports for kind's `extraPortMappings`: whether this user can take a port on 127.0.0.1
//! (`probe`), and when another process holds it, which one (`holder`, from /proc/net/tcp{,6}
//! and the socket inodes under /proc/*/fd). A port can be unusable for two different
//! reasons that need different fixes: it is taken (EADDRINUSE), or it is below the
//! unprivileged port floor and this user may not bind it (EACCES).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What a test bind of a host port on 127.0.0.1 found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    Free,
    /// Another socket listens on it (EADDRINUSE).
    Taken {
        holder: Option<Holder>,
    },
    /// This user may not bind it (EACCES): below `floor`, the unprivileged port start.
    NotAllowed {
        uid: u32,
        user: Option<String>,
        floor: u16,
    },
    /// Any other failure, as the OS said it.
    Failed(String),
}

/// The process (or at least the user) that listens on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub uid: u32,
    pub user: Option<String>,
    /// `(pid, command name)`, when this user may look at the process's descriptors.
    pub process: Option<(u32, String)>,
}

/// Tries to bind `127.0.0.1:port` (closing it at once) and says what stands in the way.
pub fn probe(port: u16) -> PortState {
    match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => PortState::Free,
        Err(e) if e.kind() == ErrorKind::AddrInUse => PortState::Taken {
            holder: holder(port),
        },
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            // SAFETY: getuid(2) has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            PortState::NotAllowed {
                uid,
                user: user_name(uid),
                floor: unprivileged_port_start(),
            }
        }
        Err(e) => PortState::Failed(e.to_string()),
    }
}

/// `net.ipv4.ip_unprivileged_port_start`: the lowest port a user without
/// CAP_NET_BIND_SERVICE may bind (1024 unless changed).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1024)
}

/// Who listens on `port` in a way that blocks 127.0.0.1 (on 127.0.0.1 itself, or on every
/// address), read from /proc. `None` when /proc shows no such listener.
pub fn holder(port: u16) -> Option<Holder> {
    let socket = listening_sockets()
        .into_iter()
        .find(|s| s.addr.port() == port && blocks_loopback(s.addr.ip()))?;
    Some(Holder {
        uid: socket.uid,
        user: user_name(socket.uid),
        process: process_of_socket(socket.inode),
    })
}

/// Whether a listener on `ip` keeps 127.0.0.1 from binding the same port.
fn blocks_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6.is_unspecified() || v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST),
    }
}

/// One socket in LISTEN state, as /proc/net/tcp{,6} shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListeningSocket {
    pub addr: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// TCP sockets in LISTEN state in this network namespace, from /proc/net/tcp and tcp6.
pub fn listening_sockets() -> Vec<ListeningSocket> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| parse_proc_net_tcp(&std::fs::read_to_string(f).unwrap_or_default()))
        .collect()
}

/// The LISTEN sockets of one /proc/net/tcp{,6} table.
pub fn parse_proc_net_tcp(text: &str) -> Vec<ListeningSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() <= 9 || cols[3] != "0A" {
                return None;
            }
            let (addr, port) = cols[1].rsplit_once(':')?;
            Some(ListeningSocket {
                addr: SocketAddr::new(proc_net_ip(addr)?, u16::from_str_radix(port, 16).ok()?),
                uid: cols[7].parse().ok()?,
                inode: cols[9].parse().ok()?,
            })
        })
        .collect()
}

/// An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in host byte order.
fn proc_net_ip(hex: &str) -> Option<IpAddr> {
    let mut bytes = Vec::new();
    for i in (0..hex.len()).step_by(8) {
        let word = u32::from_str_radix(hex.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The socket inodes a process holds open, from the `socket:[N]` links in /proc/PID/fd.
/// Empty for another user's process, whose descriptors this user may not read.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The process holding socket `inode`, with its command name.
fn process_of_socket(inode: u64) -> Option<(u32, String)> {
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| socket_inodes(pid).contains(&inode))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some((pid, comm.trim().to_string()))
}

/// The name of user `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    users(&passwd).remove(&uid)
}

fn users(passwd: &str) -> BTreeMap<u32, String> {
    passwd
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:77BA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:7F1B 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 41235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:77BA 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 51000 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn reads_listening_sockets_with_owner_and_inode() {
        let v4 = parse_proc_net_tcp(TCP);
        assert_eq!(
            v4,
            [
                ListeningSocket {
                    addr: "127.0.0.1:30650".parse().unwrap(),
                    uid: 0,
                    inode: 41234
                },
                ListeningSocket {
                    addr: "0.0.0.0:32539".parse().unwrap(),
                    uid: 65534,
                    inode: 41235
                },
            ],
            "the established connection (state 01) is left out"
        );
        let v6 = parse_proc_net_tcp(TCP6);
        assert_eq!(v6[0].addr, "[::]:8080".parse().unwrap());
        assert_eq!(v6[0].uid, 1000);
    }

    #[test]
    fn only_loopback_and_wildcard_listeners_block_loopback() {
        for (ip, blocks) in [
            ("127.0.0.1", true),
            ("0.0.0.0", true),
            ("::", true),
            ("::ffff:127.0.0.1", true),
            ("10.1.2.3", false),
            ("::1", false),
        ] {
            assert_eq!(blocks_loopback(ip.parse().unwrap()), blocks, "{ip}");
        }
    }

    #[test]
    fn user_names_come_from_passwd() {
        let u = users(
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        );
        assert_eq!(u[&0], "root");
        assert_eq!(u[&65534], "nobody");
    }

    #[test]
    fn a_port_held_here_is_taken_and_its_holder_is_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let PortState::Taken { holder: Some(h) } = probe(port) else {
            panic!("port {port} should be taken: {:?}", probe(port));
        };
        // SAFETY: getuid(2) has no preconditions.
        assert_eq!(h.uid, unsafe { libc::getuid() });
        let (pid, _) = h
            .process
            .expect("this process's own descriptors are readable");
        assert_eq!(pid, std::process::id());
        drop(listener);
        assert_eq!(probe(port), PortState::Free);
    }
}
