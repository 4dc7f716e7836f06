//! Cluster state from files: YAML or JSON files, and directories of them read recursively.
//!
//! In a directory, files ending in `.yaml`, `.yml` or `.json` are read in path order; entries
//! whose name starts with `.` are skipped (that also skips the `..data` links of a mounted
//! ConfigMap, which would otherwise be read twice). A path given explicitly is read whatever
//! its name; `-` is standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use podwall_policy::{ClusterState, LoadReport, Loader};

/// A file's name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as given or found (for messages).
    pub name: String,
    /// Its contents.
    pub text: String,
}

/// A source that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory holds no YAML or JSON file.
    #[error("{path}: no .yaml, .yml or .json files in this directory")]
    EmptyDirectory {
        /// The directory.
        path: String,
    },
    /// A file is not YAML at all.
    #[error(transparent)]
    Parse(#[from] podwall_policy::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads every path: files as they are, directories recursively.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<SourceFile>, SourceError> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(io_error(path))?;
            out.push(SourceFile {
                name: "<stdin>".into(),
                text,
            });
            continue;
        }
        walk(path, &mut |file, _| {
            out.push(read_file(file)?);
            Ok(())
        })?;
    }
    Ok(out)
}

/// A fingerprint of the files [`read_paths`] would read, from their metadata alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// A hash of each file's path, inode, size, and modification and change times. (The change
    /// time moves on every write and cannot be set back; a mounted ConfigMap's update swaps in
    /// new files, which changes the inodes.)
    pub value: u64,
    /// Every file was last changed at least [`SETTLED_AFTER`] before it was looked at. Time
    /// stamps are coarse (a clock tick), so two same-size writes within one tick leave the same
    /// fingerprint: only a settled one proves that the contents read with it are the latest.
    pub settled: bool,
    /// How many files it covers.
    pub files: usize,
}

/// How long a file must have been left alone for its metadata to vouch for its contents.
pub const SETTLED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The [`Fingerprint`] of the paths. A poller compares it before reading anything, so an
/// unchanged source costs a few `stat`s, not reading and hashing every file. Standard input is
/// not fingerprinted.
pub fn fingerprint_paths(paths: &[PathBuf]) -> Result<Fingerprint, SourceError> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let now = std::time::SystemTime::now();
    let settled_before = now
        .checked_sub(SETTLED_AFTER)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut settled = true;
    let mut files = 0;
    for path in paths.iter().filter(|p| p.as_os_str() != "-") {
        walk(path, &mut |file, meta| {
            files += 1;
            file.hash(&mut h);
            (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()).hash(&mut h);
            (meta.ctime(), meta.ctime_nsec()).hash(&mut h);
            let changed = std::time::Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
            settled &= changed < settled_before;
            Ok(())
        })?;
    }
    Ok(Fingerprint {
        value: h.finish(),
        settled,
        files,
    })
}

/// Calls `file` for a path given as a file, or for each manifest under a directory given, in
/// path order (hidden entries skipped). A directory without any is an error.
fn walk(
    path: &Path,
    file: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return file(path, &meta);
    }
    let mut found = 0;
    walk_dir(path, &mut found, file)?;
    if found == 0 {
        return Err(SourceError::EmptyDirectory {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<SourceFile, SourceError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    Ok(SourceFile {
        name: path.display().to_string(),
        text,
    })
}

fn walk_dir(
    dir: &Path,
    found: &mut usize,
    file: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_error(dir))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io_error(&path))?;
        if meta.is_dir() {
            walk_dir(&path, found, file)?;
        } else if is_manifest(&path) {
            *found += 1;
            file(&path, &meta)?;
        }
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads the paths and loads the cluster state they describe.
pub fn load_paths(paths: &[PathBuf]) -> Result<(ClusterState, LoadReport), SourceError> {
    let mut loader = Loader::new();
    for file in read_paths(paths)? {
        loader.add_yaml(&file.name, &file.text)?;
    }
    Ok(loader.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn the_fingerprint_moves_when_a_read_file_changes_and_only_then() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.yaml",
            "kind: Namespace\nmetadata: {name: a}\n",
        );
        write(dir.path(), "notes.txt", "one");
        let paths = [dir.path().to_path_buf()];
        let fp = || fingerprint_paths(&paths).expect("fingerprint").value;
        let first = fp();
        assert_eq!(fp(), first, "nothing changed");
        // A file the source does not read.
        write(dir.path(), "notes.txt", "two, longer");
        assert_eq!(fp(), first);
        // The same size, rewritten in place: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(10));
        write(
            dir.path(),
            "a.yaml",
            "kind: Namespace\nmetadata: {name: b}\n",
        );
        let second = fp();
        assert_ne!(second, first);
        // A new manifest.
        write(
            dir.path(),
            "c/d.yml",
            "kind: Namespace\nmetadata: {name: d}\n",
        );
        assert_ne!(fp(), second);
        // Just written: not settled, so a poller reads the files again until it is.
        assert!(!fingerprint_paths(&paths).expect("fingerprint").settled);
        // An empty directory is the same error as for reading.
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            fingerprint_paths(&[empty.path().to_path_buf()]),
            Err(SourceError::EmptyDirectory { .. })
        ));
    }

    #[test]
    fn directories_are_read_recursively_in_path_order_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "b.yaml",
            "kind: Namespace\nmetadata: {name: b}\n",
        );
        write(
            dir.path(),
            "a/x.yml",
            "kind: Namespace\nmetadata: {name: x}\n",
        );
        write(
            dir.path(),
            "a/y.json",
            "{\"kind\": \"Namespace\", \"metadata\": {\"name\": \"y\"}}",
        );
        write(dir.path(), "notes.txt", "not yaml: [");
        write(
            dir.path(),
            "..data/z.yaml",
            "kind: Namespace\nmetadata: {name: z}\n",
        );
        let files = read_paths(&[dir.path().to_path_buf()]).expect("read");
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                Path::new(&f.name)
                    .strip_prefix(dir.path())
                    .expect("under dir")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a/x.yml", "a/y.json", "b.yaml"]);
        let (state, _) = load_paths(&[dir.path().to_path_buf()]).expect("load");
        let ns: Vec<&str> = state.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(ns, ["b", "x", "y"]);
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let err = read_paths(&[PathBuf::from("/nonexistent/podwall")]).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/podwall"), "{err}");
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_paths(&[dir.path().to_path_buf()]).expect_err("empty");
        assert!(matches!(err, SourceError::EmptyDirectory { .. }));
    }

    #[test]
    fn broken_yaml_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bad.yaml", "kind: [unclosed\n");
        let err = load_paths(&[dir.path().join("bad.yaml")]).expect_err("bad yaml");
        assert!(err.to_string().contains("bad.yaml"), "{err}");
    }
}
