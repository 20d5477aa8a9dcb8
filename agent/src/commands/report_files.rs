//! The files tools and tests read instead of the log: `--ready-file` (written once the agent
//! traces) and `--stats-file` (every stage's final counters, written as the agent stops).
//! Both are written whole (a temporary file renamed over the path), so a reader never sees half.

use std::path::Path;

use serde_json::{Map, Value};

use crate::pipeline::PipelineError;

/// The folder of each given file exists (said before anything is attached); `files` pairs
/// each path with the flag that named it.
pub fn check(files: &[(&'static str, Option<&Path>)]) -> Result<(), PipelineError> {
    for &(flag, path) in files {
        let Some(path) = path else { continue };
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(folder) = folder
            && !folder.is_dir()
        {
            return Err(PipelineError::ReportFile {
                flag,
                detail: format!("{}: its folder does not exist", path.display()),
            });
        }
    }
    Ok(())
}

/// Writes `value` as one JSON line to `path` (named by `flag`), whole.
pub fn write(flag: &'static str, path: &Path, value: &Value) -> Result<(), PipelineError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{value}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| PipelineError::ReportFile {
            flag,
            detail: format!("{}: {e}", path.display()),
        })
}

/// The agent's final counters, in the order the log line shows them.
#[derive(Debug, Default)]
pub struct FinalStats(Vec<(&'static str, Value)>);

impl FinalStats {
    /// Adds a counter.
    pub fn add(&mut self, name: &'static str, value: impl Into<Value>) -> &mut Self {
        self.0.push((name, value.into()));
        self
    }

    /// Adds `(name, count)` pairs as one field: an object in the file, `a:1,b:2` in the log.
    pub fn add_counts<'n>(
        &mut self,
        name: &'static str,
        counts: impl IntoIterator<Item = (&'n str, u64)>,
    ) -> &mut Self {
        let counts: Map<String, Value> = counts
            .into_iter()
            .map(|(k, n)| (k.to_string(), n.into()))
            .collect();
        self.add(name, Value::Object(counts))
    }

    /// The counters as one JSON object (`--stats-file`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        )
    }
}

/// `key=value` pairs, as the final log line shows them.
impl std::fmt::Display for FinalStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}=")?;
            match value {
                Value::Object(counts) => {
                    for (j, (k, n)) in counts.iter().enumerate() {
                        if j > 0 {
                            f.write_str(",")?;
                        }
                        write!(f, "{k}:{n}")?;
                    }
                }
                other => write!(f, "{other}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_and_the_file_hold_the_same_counters() {
        let mut stats = FinalStats::default();
        stats
            .add("spans_exported", 3_u64)
            .add_counts("protocol_connections", [("http1", 2), ("redis", 1)]);
        assert_eq!(
            stats.to_string(),
            "spans_exported=3 protocol_connections=http1:2,redis:1"
        );
        assert_eq!(
            stats.to_json(),
            serde_json::json!({"spans_exported": 3, "protocol_connections": {"http1": 2, "redis": 1}})
        );
    }

    #[test]
    fn a_file_in_a_missing_folder_is_refused_before_start() {
        let missing = Path::new("/nonexistent-sockspan-folder/ready.json");
        let err = check(&[("--stats-file", None), ("--ready-file", Some(missing))])
            .expect_err("missing folder");
        assert_eq!(
            err.to_string(),
            "--ready-file /nonexistent-sockspan-folder/ready.json: its folder does not exist"
        );
    }
}
