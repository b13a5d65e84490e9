//! Finding a Hugging Face hub dataset's parquet files: the hub's file listing
//! (`{endpoint}/api/datasets/{repo}/tree/{revision}?recursive=true`, which gives each large
//! file's size and sha256) and its download addresses
//! (`{endpoint}/datasets/{repo}/resolve/{revision}/{path}`).
//!
//! Which files: every `*.parquet` file under `subset/` (when given) that belongs to the split,
//! in path order. A file belongs to split `train` when a folder of its path is named `train`
//! or its name has `train` between separators (`-._` or digits, as in
//! `train-00000-of-00080.parquet`), as the hub's own data-files rules say; when no file
//! names any split, every file is `train`. A dataset whose `main` holds no parquet files is
//! looked for in `refs/convert/parquet`, the branch where the hub keeps its own parquet
//! conversion of script-based datasets.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// A file of the dataset on the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubFile {
    /// Path inside the repository.
    pub path: String,
    pub size: u64,
    /// The sha256 of its content, which the hub lists for files stored with Git LFS (all
    /// parquet files of any size).
    pub sha256: Option<String>,
}

/// Where a dataset is and which of its files to take.
#[derive(Clone, Debug)]
pub struct HubDataset {
    /// e.g. `https://huggingface.co` (see [`crate::hf::Hub`]).
    pub endpoint: String,
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit; `None`: `main`, else `refs/convert/parquet`.
    pub revision: Option<String>,
    pub split: String,
    /// Only files under this folder of the repository (a configuration such as `plain_text`).
    pub subset: Option<String>,
    /// Sent as a bearer token (see [`crate::hf::Hub`]), for private or gated datasets.
    pub token: Option<String>,
}

pub const CONVERTED_PARQUET_REVISION: &str = "refs/convert/parquet";

/// Split names that, when one of them appears in some file's path, mean the files name their
/// splits (see the module docs).
const SPLIT_NAMES: [&str; 7] = ["train", "validation", "valid", "val", "test", "dev", "eval"];

impl HubDataset {
    /// The dataset's parquet files for the split, in order, and the revision they are in.
    pub fn parquet_files(&self) -> Result<(String, Vec<HubFile>)> {
        let agent = crate::download::agent();
        let revisions = match &self.revision {
            Some(r) => vec![r.clone()],
            None => vec!["main".to_string(), CONVERTED_PARQUET_REVISION.to_string()],
        };
        for revision in &revisions {
            let all = self.list(agent, revision)?;
            let parquet: Vec<HubFile> = all
                .into_iter()
                .filter(|f| f.path.to_ascii_lowercase().ends_with(".parquet"))
                .filter(|f| match &self.subset {
                    Some(s) => f.path.starts_with(&format!("{}/", s.trim_end_matches('/'))),
                    None => true,
                })
                .collect();
            if parquet.is_empty() {
                continue;
            }
            let mut files = select_split(&parquet, &self.split);
            if files.is_empty() {
                let some: Vec<&str> = parquet.iter().take(5).map(|f| f.path.as_str()).collect();
                bail!(
                    "dataset {} has no parquet files for split \"{}\" (it has {} files, e.g. {}); set --split",
                    self.repo,
                    self.split,
                    parquet.len(),
                    some.join(", ")
                );
            }
            files.sort_by(|a, b| a.path.cmp(&b.path));
            return Ok((revision.clone(), files));
        }
        bail!(
            "dataset {} has no parquet files{} at revision {}; this command reads parquet datasets (download other formats yourself and pass --input DIR)",
            self.repo,
            self.subset
                .as_ref()
                .map(|s| format!(" under {s}/"))
                .unwrap_or_default(),
            revisions.join(" or ")
        )
    }

    /// Where to download `path` from.
    pub fn file_url(&self, revision: &str, path: &str) -> String {
        format!(
            "{}/datasets/{}/resolve/{}/{}",
            self.endpoint,
            self.repo,
            encode_revision(revision),
            path
        )
    }

    /// Every file of the repository at `revision`, following the listing's pages.
    fn list(&self, agent: &ureq::Agent, revision: &str) -> Result<Vec<HubFile>> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "type")]
            kind: String,
            path: String,
            #[serde(default)]
            size: u64,
            lfs: Option<Lfs>,
        }
        #[derive(Deserialize)]
        struct Lfs {
            oid: String,
        }
        let mut url = Some(format!(
            "{}/api/datasets/{}/tree/{}?recursive=true",
            self.endpoint,
            self.repo,
            encode_revision(revision)
        ));
        let mut files = Vec::new();
        while let Some(page) = url.take() {
            let mut request = agent.get(&page);
            if let Some(token) = &self.token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            let response = match request.call() {
                Ok(r) => r,
                // A missing revision (e.g. no refs/convert/parquet branch) lists nothing.
                Err(ureq::Error::Status(404, _)) if revision == CONVERTED_PARQUET_REVISION => {
                    return Ok(Vec::new())
                }
                Err(ureq::Error::Status(404, _)) => bail!(
                    "dataset {} (revision {revision}) was not found at {}; check --dataset (owner/name) and --revision",
                    self.repo,
                    self.endpoint
                ),
                Err(ureq::Error::Status(code @ (401 | 403), _)) => bail!(
                    "dataset {} is private or gated (HTTP {code} from {}): accept its terms on the hub and set HF_TOKEN, or download its parquet files yourself and pass --input DIR",
                    self.repo,
                    self.endpoint
                ),
                Err(ureq::Error::Status(code, r)) => bail!(
                    "cannot list the files of dataset {} at {}: HTTP {code} {}; try again later, or download its parquet files yourself and pass --input DIR",
                    self.repo,
                    self.endpoint,
                    r.status_text()
                ),
                Err(ureq::Error::Transport(t)) => bail!(
                    "cannot reach the Hugging Face hub at {} ({t}); no network? Download the dataset's parquet files yourself and pass --input DIR (or set HF_ENDPOINT to a mirror)",
                    self.endpoint
                ),
            };
            url = response.header("Link").and_then(next_page);
            let mut body = Vec::new();
            response
                .into_reader()
                .take(64 << 20)
                .read_to_end(&mut body)
                .map_err(|e| anyhow!("cannot read the file listing from {page}: {e}"))?;
            let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(|e| {
                anyhow!(
                    "{page} did not return a file listing ({e}); is {} a Hugging Face hub? check HF_ENDPOINT",
                    self.endpoint
                )
            })?;
            files.extend(
                entries
                    .into_iter()
                    .filter(|e| e.kind == "file")
                    .map(|e| HubFile {
                        path: e.path,
                        size: e.size,
                        sha256: e.lfs.map(|l| l.oid),
                    }),
            );
        }
        Ok(files)
    }
}

/// A revision inside a URL path: `refs/convert/parquet` -> `refs%2Fconvert%2Fparquet`.
fn encode_revision(revision: &str) -> String {
    revision.replace('/', "%2F")
}

/// The `rel="next"` address of a `Link` header.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// The files of `split`, or all of them when no file names any split and the split is
/// `train` (see the module docs).
fn select_split(files: &[HubFile], split: &str) -> Vec<HubFile> {
    let named = files
        .iter()
        .any(|f| SPLIT_NAMES.iter().any(|s| names_split(&f.path, s)));
    files
        .iter()
        .filter(|f| match named {
            true => names_split(&f.path, split),
            false => split == "train",
        })
        .cloned()
        .collect()
}

/// Whether `path` names `split`: as a folder, or in the file name between separators.
pub fn names_split(path: &str, split: &str) -> bool {
    let path = path.to_ascii_lowercase();
    let mut parts: Vec<&str> = path.split('/').collect();
    let Some(file) = parts.pop() else {
        return false;
    };
    if parts.contains(&split) {
        return true;
    }
    let stem = file.strip_suffix(".parquet").unwrap_or(file);
    let is_sep = |c: Option<char>| {
        c.is_none_or(|c| matches!(c, '-' | '.' | '_' | ' ') || c.is_ascii_digit())
    };
    stem.match_indices(split).any(|(i, m)| {
        is_sep(stem[..i].chars().next_back()) && is_sep(stem[i + m.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> HubFile {
        HubFile {
            path: path.into(),
            size: 1,
            sha256: None,
        }
    }

    #[test]
    fn split_names_in_paths() {
        assert!(names_split(
            "plain_text/train-00000-of-00080.parquet",
            "train"
        ));
        assert!(names_split("plain_text/train/0000.parquet", "train"));
        assert!(names_split("data/train_0.parquet", "train"));
        assert!(names_split("wikitext-103-v1/wikitext-test.parquet", "test"));
        assert!(!names_split("data/pretrain-0.parquet", "train"));
        assert!(!names_split("data/trainee.parquet", "train"));
        assert!(!names_split("contest/0.parquet", "test"));
    }

    #[test]
    fn unnamed_splits_are_all_train() {
        let files = vec![
            file("data/000_00000.parquet"),
            file("data/000_00001.parquet"),
        ];
        assert_eq!(select_split(&files, "train"), files);
        assert!(select_split(&files, "test").is_empty());
        let named = vec![file("d/train-0.parquet"), file("d/test-0.parquet")];
        assert_eq!(select_split(&named, "train"), vec![named[0].clone()]);
        assert_eq!(select_split(&named, "test"), vec![named[1].clone()]);
    }

    #[test]
    fn link_header_next_page() {
        let link = "<https://hub.example/api/datasets/a/b/tree/main?cursor=xyz>; rel=\"next\"";
        assert_eq!(
            next_page(link).as_deref(),
            Some("https://hub.example/api/datasets/a/b/tree/main?cursor=xyz")
        );
        assert_eq!(next_page("<https://x/prev>; rel=\"prev\""), None);
    }
}
