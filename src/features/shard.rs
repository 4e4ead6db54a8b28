//! Splitting an extraction into N disjoint parts that workers on different machines agree on
//! without talking: an image belongs to the part given by a stable hash of its path relative
//! to the data folder. Cluster engines give each worker its part through their own
//! environment variables (Slurm job arrays, Kubernetes Indexed Jobs); Ray tasks pass it.

use std::fmt;
use std::path::Path;

/// The `index`-th (0-based) of `count` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard {0:?}: expected I/N with 0 <= I < N (e.g. 0/4), or auto")]
    Syntax(String),
    #[error(
        "shard auto: no engine found: set SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a Slurm job array), or JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) with the job's completions as the number of shards"
    )]
    NoEngine,
    #[error("shard auto: {name}={value:?} is not a number")]
    NotANumber { name: &'static str, value: String },
    #[error(
        "shard auto: a Kubernetes Indexed Job (JOB_COMPLETION_INDEX={index}) needs the number of shards (the job's completions)"
    )]
    MissingCount { index: usize },
    #[error("shard auto: {what} gives shard {index} of {count}, outside 0..{count}")]
    OutOfRange {
        what: &'static str,
        index: usize,
        count: usize,
    },
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// `I/N`.
    pub fn parse(text: &str) -> Result<Self, ShardError> {
        let bad = || ShardError::Syntax(text.to_string());
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = index.trim().parse().map_err(|_| bad())?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// The shard a cluster engine assigned to this process, from its environment (`var`
    /// looks a variable up): a Slurm job array (`SLURM_ARRAY_TASK_ID` minus
    /// `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`), or a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`, of `count`: the job's completions). `count`, when given,
    /// must agree with Slurm's.
    pub fn from_engine(
        var: impl Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> Result<Self, ShardError> {
        let number = |name: &'static str| -> Result<Option<usize>, ShardError> {
            match var(name) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| ShardError::NotANumber { name, value }),
            }
        };
        let checked = |what, index, count| {
            if index < count {
                Ok(Self { index, count })
            } else {
                Err(ShardError::OutOfRange { what, index, count })
            }
        };
        if let Some(task) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let slurm_count = number("SLURM_ARRAY_TASK_COUNT")?;
            let count = match (slurm_count, count) {
                (Some(slurm), Some(given)) if slurm != given => {
                    return Err(ShardError::OutOfRange {
                        what: "SLURM_ARRAY_TASK_COUNT (which disagrees with the number of shards given)",
                        index: slurm,
                        count: given,
                    });
                }
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => return Err(ShardError::NoEngine),
            };
            return checked("the Slurm job array", task.saturating_sub(min), count);
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count.ok_or(ShardError::MissingCount { index })?;
            return checked("the Kubernetes Indexed Job", index, count);
        }
        Err(ShardError::NoEngine)
    }

    /// Whether the image at `relative` (its path relative to the data folder) is in this
    /// shard. A stable hash (sha256 of the path with `/` separators), so every worker and
    /// every rerun agrees.
    pub fn owns(&self, relative: &Path) -> bool {
        let text = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let digest = crate::util::sha256_hex(text.as_bytes());
        // cannot fail: a sha256 hex digest has 64 hex digits
        let head = u64::from_str_radix(&digest[..16], 16).expect("hex digest");
        (head % self.count as u64) as usize == self.index
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        for bad in ["4/4", "1/0", "x/2", "3", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slurm_job_arrays_count_from_their_minimum() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_engine(&slurm, None),
            Ok(Shard { index: 2, count: 4 })
        );
        // `--array=0-3`: IDs from 0.
        let zero = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_engine(&zero, Some(4)),
            Ok(Shard { index: 3, count: 4 })
        );
        assert!(Shard::from_engine(&zero, Some(8)).is_err());
        let beyond = env(&[
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(matches!(
            Shard::from_engine(&beyond, None),
            Err(ShardError::OutOfRange { .. })
        ));
    }

    #[test]
    fn kubernetes_indexed_jobs_need_the_completions() {
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(
            Shard::from_engine(&k8s, Some(3)),
            Ok(Shard { index: 1, count: 3 })
        );
        assert_eq!(
            Shard::from_engine(&k8s, None),
            Err(ShardError::MissingCount { index: 1 })
        );
        assert_eq!(
            Shard::from_engine(env(&[]), Some(3)),
            Err(ShardError::NoEngine)
        );
        assert!(matches!(
            Shard::from_engine(env(&[("JOB_COMPLETION_INDEX", "one")]), Some(3)),
            Err(ShardError::NotANumber { .. })
        ));
    }

    #[test]
    fn every_path_is_in_exactly_one_shard_and_the_parts_are_balanced() {
        let paths: Vec<String> = (0..4000)
            .map(|i| format!("class{}/img{i}.jpg", i % 5))
            .collect();
        let count = 4;
        let mut sizes = [0usize; 4];
        for path in &paths {
            let owners: Vec<usize> = (0..count)
                .filter(|&index| Shard { index, count }.owns(Path::new(path)))
                .collect();
            assert_eq!(owners.len(), 1, "{path}");
            sizes[owners[0]] += 1;
        }
        for size in sizes {
            assert!((900..1100).contains(&size), "{sizes:?}");
        }
    }
}
