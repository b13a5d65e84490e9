//! A TCP ring all-reduce between processes, for CPU ranks (and the tests of data-parallel
//! training). GPU ranks want NCCL instead; this moves every byte through the kernel's TCP stack.
//!
//! Rendezvous: rank 0 listens on MASTER_PORT; every other rank connects, says its rank, the port
//! of its own ring listener and its training settings. Rank 0 refuses settings that differ from
//! its own (naming the rank and the key), then tells each rank the address of its right-hand
//! neighbour (rank + 1 mod W). Each rank connects to its right and accepts its left.
//!
//! A buffer is split in W parts (`dist::shard_bounds`). Reduce-scatter: W-1 steps, at step s
//! rank r sends part (r - s - 1) mod W to the right and adds the part (r - s - 2) mod W that
//! arrives from the left, so part c starts at rank c + 1, goes once round, and ends summed at
//! rank c: added in the order c+1, c+2, ..., c on every run, so the result is deterministic.
//! All-gather: W-1 steps that pass each rank's finished part round, so every rank ends with the
//! same bits. An all-reduce is the two in turn; ZeRO-1 runs them apart, with its optimizer step
//! between.

use super::{Collective, World};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long ranks wait for each other to start: processes of a multi-node launch can come up
/// far apart (torchrun waits 900 s; a typo in MASTER_ADDR should not take that long to report).
const RENDEZVOUS: Duration = Duration::from_secs(120);

pub struct Ring {
    world: World,
    /// From rank - 1.
    left: TcpStream,
    /// To rank + 1.
    right: TcpStream,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    rank: usize,
    size: usize,
    ring_port: u16,
    settings: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Right(SocketAddr),
    Refused(String),
}

impl Ring {
    /// Joins the run: every rank passes the same `settings` (the training config), or rank 0
    /// refuses the run.
    pub fn connect(world: World, settings: serde_json::Value) -> Result<Ring> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .context("cannot open a port for the ring of ranks")?;
        let ring_port = listener.local_addr()?.port();
        let right = if world.rank == 0 {
            rendezvous_as_master(&world, ring_port, &settings)?
        } else {
            let hello = Hello {
                rank: world.rank,
                size: world.size,
                ring_port,
                settings,
            };
            rendezvous(&world, &hello)?
        };
        let deadline = Instant::now() + RENDEZVOUS;
        let mut right = retry_connect(&right, deadline, "its right-hand neighbour")?;
        right.write_all(&(world.rank as u64).to_le_bytes())?;
        let left = accept_until(&listener, deadline).with_context(|| {
            format!(
                "rank {} never heard from rank {}",
                world.rank,
                left_of(&world)
            )
        })?;
        let mut who = [0u8; 8];
        (&left).read_exact(&mut who)?;
        if u64::from_le_bytes(who) as usize != left_of(&world) {
            bail!("rank {}: a stranger connected to the ring port", world.rank);
        }
        for s in [&left, &right] {
            s.set_nodelay(true)?;
        }
        Ok(Ring { world, left, right })
    }

    /// Sends `out` to the right while receiving as many bytes from the left (both at once: a
    /// ring where everyone only sends would fill the sockets' buffers and stall).
    fn exchange(&mut self, out: &[u8], into: &mut [u8]) -> Result<()> {
        let (left_rank, right_rank) = (
            left_of(&self.world),
            (self.world.rank + 1) % self.world.size,
        );
        let right = &mut self.right;
        let left = &mut self.left;
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || right.write_all(out));
            let received = left.read_exact(into);
            let sent = sender
                .join()
                .map_err(|_| anyhow!("the sending thread panicked"))?;
            sent.map_err(|e| peer_gone(right_rank, e))?;
            received.map_err(|e| peer_gone(left_rank, e))
        })
    }
}

impl Collective for Ring {
    fn world(&self) -> &World {
        &self.world
    }

    fn reduce_scatter_sum(&mut self, buf: &mut [f32], bounds: &[usize]) -> Result<()> {
        let (w, r) = (self.world.size, self.world.rank);
        check_bounds(bounds, w, buf.len())?;
        let mut incoming = Vec::new();
        for step in 0..w - 1 {
            // Part c starts at rank c + 1 and arrives, summed, at rank c.
            let send = (r + 2 * w - step - 1) % w;
            let recv = (send + w - 1) % w;
            let out: Vec<u8> = buf[bounds[send]..bounds[send + 1]]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            incoming.resize(4 * (bounds[recv + 1] - bounds[recv]), 0);
            self.exchange(&out, &mut incoming)?;
            for (x, b) in buf[bounds[recv]..bounds[recv + 1]]
                .iter_mut()
                .zip(incoming.chunks_exact(4))
            {
                *x += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }

    fn all_gather_bytes(&mut self, buf: &mut [u8], bounds: &[usize]) -> Result<()> {
        let (w, r) = (self.world.size, self.world.rank);
        check_bounds(bounds, w, buf.len())?;
        for step in 0..w - 1 {
            // Rank r passes on what it got last step (its own part first).
            let send = (r + w - step) % w;
            let recv = (send + w - 1) % w;
            let out = buf[bounds[send]..bounds[send + 1]].to_vec();
            self.exchange(&out, &mut buf[bounds[recv]..bounds[recv + 1]])?;
        }
        Ok(())
    }

    fn gather_bytes(&mut self, part: &[u8], whole: &mut [u8], bounds: &[usize]) -> Result<()> {
        let (w, r) = (self.world.size, self.world.rank);
        check_bounds(bounds, w, bounds.last().copied().unwrap_or(0))?;
        let room = if r == 0 { bounds[w] } else { 0 };
        if whole.len() != room || part.len() != bounds[r + 1] - bounds[r] {
            bail!(
                "gather called with a part of {} bytes and room for {} on rank {r} of {w} (a bug)",
                part.len(),
                whole.len()
            );
        }
        if r == 0 {
            whole[bounds[0]..bounds[1]].copy_from_slice(part);
        }
        // Part p (p >= 1) travels p, p+1, ..., W-1, 0: at step s rank r passes on part r - s,
        // the one it received the step before (its own first), until the part reaches rank 0.
        let left = left_of(&self.world);
        let (mut carried, mut incoming) = (Vec::new(), Vec::new());
        for step in 0..w - 1 {
            let out: &[u8] = match step {
                _ if r <= step => &[],
                0 => part,
                _ => &carried,
            };
            let arriving = (left > step).then(|| left - step);
            incoming.resize(arriving.map_or(0, |p| bounds[p + 1] - bounds[p]), 0);
            self.exchange(out, &mut incoming)?;
            match arriving {
                Some(p) if r == 0 => whole[bounds[p]..bounds[p + 1]].copy_from_slice(&incoming),
                Some(_) => std::mem::swap(&mut carried, &mut incoming),
                None => {}
            }
        }
        Ok(())
    }
}

/// A caller's bug (every rank computes the bounds the same way), caught before it desynchronises
/// the ring.
fn check_bounds(bounds: &[usize], w: usize, len: usize) -> Result<()> {
    if bounds.len() != w + 1
        || bounds[0] != 0
        || bounds[w] != len
        || bounds.windows(2).any(|p| p[0] > p[1])
    {
        bail!("collective called with bounds {bounds:?} for {w} ranks and {len} elements (a bug)");
    }
    Ok(())
}

fn left_of(world: &World) -> usize {
    (world.rank + world.size - 1) % world.size
}

fn peer_gone(rank: usize, e: std::io::Error) -> anyhow::Error {
    anyhow!("rank {rank} stopped ({e}): ending this rank too; see rank {rank}'s error")
}

/// Rank 0: waits for every other rank, checks their settings, and sends each its neighbour.
/// Returns rank 0's own right-hand neighbour.
fn rendezvous_as_master(
    world: &World,
    ring_port: u16,
    settings: &serde_json::Value,
) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, world.master_port)).with_context(|| {
            format!(
            "rank 0 cannot listen on port {}: is another run using it? Choose another MASTER_PORT",
            world.master_port
        )
        })?;
    let deadline = Instant::now() + RENDEZVOUS;
    let mut ranks: Vec<Option<(TcpStream, SocketAddr)>> = (0..world.size).map(|_| None).collect();
    let mut refusal = None;
    let mut waiting = world.size - 1;
    while waiting > 0 {
        let stream = accept_until(&listener, deadline).with_context(|| {
            let missing: Vec<String> = (1..world.size)
                .filter(|&r| ranks[r].is_none())
                .map(|r| r.to_string())
                .collect();
            format!(
                "rank 0 waited {} s for ranks {}: did they start, with MASTER_ADDR pointing here?",
                RENDEZVOUS.as_secs(),
                missing.join(", ")
            )
        })?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let hello: Hello = serde_json::from_str(&line)
            .context("a rank sent a garbled hello: is something else using MASTER_PORT?")?;
        if hello.size != world.size
            || hello.rank == 0
            || hello.rank >= world.size
            || ranks[hello.rank].is_some()
        {
            refusal.get_or_insert(format!(
                "rank {} of {} joined a run of {} ranks (or twice): check the launcher's settings",
                hello.rank, hello.size, world.size
            ));
            continue;
        }
        if let Some(key) = first_difference(settings, &hello.settings) {
            refusal.get_or_insert(format!(
                "rank {}'s settings differ from rank 0's at {key}: every rank must run the same command",
                hello.rank
            ));
        }
        let peer = SocketAddr::new(stream.peer_addr()?.ip(), hello.ring_port);
        ranks[hello.rank] = Some((stream, peer));
        waiting -= 1;
    }
    // The others reach rank 0 where they reached it for the rendezvous.
    let own = (world.master_addr.as_str(), ring_port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ring_port));
    let addresses: Vec<SocketAddr> = ranks
        .iter()
        .map(|r| r.as_ref().map_or(own, |(_, a)| *a))
        .collect();
    for r in 1..world.size {
        let reply = match &refusal {
            Some(why) => Reply::Refused(why.clone()),
            None => Reply::Right(addresses[(r + 1) % world.size]),
        };
        if let Some((stream, _)) = &mut ranks[r] {
            writeln!(stream, "{}", serde_json::to_string(&reply)?)?;
        }
    }
    if let Some(why) = refusal {
        bail!("{why}");
    }
    // Alone (a run of one rank), rank 0 is its own neighbour.
    Ok(addresses[1 % world.size])
}

/// Any other rank: says hello to rank 0 and learns its right-hand neighbour.
fn rendezvous(world: &World, hello: &Hello) -> Result<SocketAddr> {
    let master = format!("{}:{}", world.master_addr, world.master_port);
    let mut stream = retry_connect(&master, Instant::now() + RENDEZVOUS, "rank 0")?;
    writeln!(stream, "{}", serde_json::to_string(hello)?)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("rank 0 closed the connection during the rendezvous")?;
    match serde_json::from_str(&line).context("rank 0 sent a garbled reply")? {
        Reply::Right(addr) => Ok(addr),
        Reply::Refused(why) => bail!("{why}"),
    }
}

fn retry_connect(addr: &impl ToSocketAddrs, deadline: Instant, who: &str) -> Result<TcpStream> {
    loop {
        let err = match addr.to_socket_addrs() {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                    Ok(s) => return Ok(s),
                    Err(e) => e.to_string(),
                },
                None => "no address".into(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("cannot reach {who} ({err}) after {} s: check MASTER_ADDR and MASTER_PORT, and that every rank started", RENDEZVOUS.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn accept_until(listener: &TcpListener, deadline: Instant) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("timed out");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The first key (path) where two settings differ, if any.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q).map(|d| {
                    if d.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}.{d}")
                    }
                }),
                _ => Some(k.clone()),
            })
        }
        _ => (a != b).then(String::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank `rank` of `size` ranks on this machine, rank 0 listening on `port`.
    fn loopback(rank: usize, size: usize, port: u16) -> World {
        World {
            rank,
            size,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    /// W ranks as threads on loopback: each buffer is rank-specific, the sums must be exact
    /// where floats are (small integers) and identical on every rank.
    #[test]
    fn ranks_on_threads_sum_identically() {
        for (size, n, port) in [(2, 1000, 29611), (3, 7, 29612), (4, 2, 29613)] {
            let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..size)
                    .map(|rank| {
                        scope.spawn(move || {
                            let world = loopback(rank, size, port);
                            let mut ring =
                                Ring::connect(world, serde_json::json!({"a": 1})).unwrap();
                            let mut buf: Vec<f32> =
                                (0..n).map(|i| (i * (rank + 1)) as f32).collect();
                            ring.all_reduce_sum(&mut buf).unwrap();
                            buf
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let want: Vec<f32> = (0..n).map(|i| (i * size * (size + 1) / 2) as f32).collect();
            for r in &results {
                assert_eq!(r, &want, "{size} ranks");
            }
        }
    }

    /// W ranks as threads: each part reaches rank 0's whole buffer, through every ring length,
    /// with parts of different sizes (rank 0's empty).
    #[test]
    fn parts_gather_on_rank_zero() {
        for (size, port) in [(2, 29616), (3, 29617), (5, 29618)] {
            let bounds: Vec<usize> = (0..=size).map(|c| c * c - c).collect();
            let bounds = &bounds;
            let whole: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..size)
                    .map(|rank| {
                        scope.spawn(move || {
                            let world = loopback(rank, size, port);
                            let mut ring = Ring::connect(world, serde_json::json!({})).unwrap();
                            let part: Vec<u8> = (bounds[rank]..bounds[rank + 1])
                                .map(|i| (i * 7 + rank) as u8)
                                .collect();
                            let mut whole = vec![0u8; if rank == 0 { bounds[size] } else { 0 }];
                            ring.gather_bytes(&part, &mut whole, bounds).unwrap();
                            whole
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let want: Vec<u8> = (0..size)
                .flat_map(|r| (bounds[r]..bounds[r + 1]).map(move |i| (i * 7 + r) as u8))
                .collect();
            assert_eq!(whole[0], want, "{size} ranks");
        }
    }

    /// Two ranks on threads; rank 1's buffer differs from rank 0's in one bit iff `differ`.
    fn compare_on_two_ranks(port: u16, differ: bool) -> Vec<Result<()>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    scope.spawn(move || {
                        let world = loopback(rank, 2, port);
                        let mut ring = Ring::connect(world, serde_json::json!({})).unwrap();
                        let mut params = vec![0.5f32; 100];
                        if differ && rank == 1 {
                            params[37] = f32::from_bits(params[37].to_bits() ^ 1);
                        }
                        crate::dist::check_same_on_every_rank(&mut ring, &params, "parameters")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn ranks_that_diverge_by_one_bit_are_caught() {
        assert!(compare_on_two_ranks(29614, false).iter().all(|r| r.is_ok()));
        for r in compare_on_two_ranks(29615, true) {
            let err = format!("{:#}", r.unwrap_err());
            assert!(
                err.contains("rank 1's parameters differ from rank 0's"),
                "{err}"
            );
        }
    }

    #[test]
    fn settings_differences_are_named() {
        let a = serde_json::json!({"lr": 1.0, "n": {"x": 1}});
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(
            first_difference(&a, &serde_json::json!({"lr": 1.0, "n": {"x": 2}})),
            Some("n.x".into())
        );
        assert_eq!(
            first_difference(&a, &serde_json::json!({"lr": 2.0, "n": {"x": 1}})),
            Some("lr".into())
        );
    }
}
