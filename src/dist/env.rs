//! The rank of this process, read from the environment its launcher set: torchrun's variables
//! (also what `nanogpt launch` sets), then Slurm's, then mpirun's (Open MPI, then PMI). Only the
//! variables are read; no MPI library is linked.

use anyhow::{bail, Context, Result};

/// Where this process stands in a run of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes of this machine.
    pub local_rank: usize,
    /// Where rank 0 waits for the others.
    pub master_addr: String,
    pub master_port: u16,
}

/// (rank, size, local rank) variable names of each launcher, in the order they are tried.
const LAUNCHERS: [(&str, &str, &str, &str); 4] = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    (
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    ("PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
];

impl World {
    /// This process's place in a run, from the environment; `None` when no launcher set one. A
    /// launcher's run of one rank is a data-parallel run too, as in nanoGPT (rank 0 of 1: the
    /// same results as no launcher, through the collective; with a GPU, NCCL's).
    pub fn from_env() -> Result<Option<World>> {
        World::from_vars(|name| std::env::var(name).ok())
    }

    /// [`World::from_env`] over any variable lookup (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let Some((launcher, rank_var, size_var, local_var)) = LAUNCHERS
            .iter()
            .find(|(_, rank, size, _)| var(rank).is_some() && var(size).is_some())
        else {
            return Ok(None);
        };
        let number = |name: &str| -> Result<usize> {
            let text = var(name).unwrap_or_default();
            text.trim()
                .parse()
                .with_context(|| format!("{name}={text:?} (set by {launcher}) is not a number"))
        };
        let (rank, size) = (number(rank_var)?, number(size_var)?);
        if size == 0 || rank >= size {
            bail!(
                "{rank_var}={rank} is not below {size_var}={size}: check the launcher's settings"
            );
        }
        let local_rank = if var(local_var).is_some() {
            number(local_var)?
        } else {
            rank
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse().with_context(|| {
                format!("MASTER_PORT={p:?} is not a port number (1-65535)")
            })?,
            // No other rank will connect: any free port does.
            None if size == 1 => 0,
            None => bail!(
                "{launcher} says this is rank {rank} of {size}, but MASTER_PORT is not set: set MASTER_ADDR and MASTER_PORT to where rank 0 listens"
            ),
        };
        Ok(Some(World {
            rank,
            size,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn each_launcher_is_read() {
        let port = [("MASTER_PORT", "29500")];
        for (rank, size, local) in [
            ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
            (
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
        ] {
            let w = world(&[(rank, "3"), (size, "4"), (local, "1"), port[0]])
                .unwrap()
                .unwrap();
            assert_eq!((w.rank, w.size, w.local_rank), (3, 4, 1), "{rank}");
            assert_eq!(
                (w.master_addr.as_str(), w.master_port),
                ("127.0.0.1", 29500)
            );
        }
        assert_eq!(world(&[]).unwrap(), None);
        let alone = world(&[("RANK", "0"), ("WORLD_SIZE", "1")])
            .unwrap()
            .unwrap();
        assert_eq!((alone.rank, alone.size, alone.master_port), (0, 1, 0));
    }

    #[test]
    fn bad_values_are_named() {
        let err = |vars: &[(&str, &str)]| format!("{:#}", world(vars).unwrap_err());
        assert!(
            err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")])
                .contains("RANK=2 is not below WORLD_SIZE=2")
        );
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_PORT is not set"));
    }
}
