//! Reading a policy set and its schema: parse, check the annotations, validate in strict mode.
//!
//! Every problem becomes a [`Diagnostic`] with the file, line and column Cedar (or the annotation
//! check) points at, and all of them are reported at once, so an operator fixes a policy set in
//! one round. A policy set that loads has no parse error, no template, no bad annotation, no
//! duplicate id, and passes Cedar's strict validation against the schema.
//!
//! Whoever can write a policy file decides every call, so on Unix a file is read only when
//! nobody but its owner can change it, as OpenSSH's `StrictModes` asks of `authorized_keys`: the
//! file (or the policy folder) must be owned by root or by the user the server runs as (its
//! effective uid) and writable by neither its group nor other users, and so must every folder
//! above it, up to `/`, both on the path as given and once symbolic links are resolved. One
//! exception: a folder above with the sticky bit (`/tmp`, mode `1777`) may be writable by
//! others, since they cannot rename or remove what they do not own in it. The policy folder
//! itself gets no such exception, as anyone could add a `.cedar` file to it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

/// One policy or schema file, read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Where the text came from; named in diagnostics.
    pub path: PathBuf,
    /// The file's whole text (UTF-8).
    pub text: String,
}

impl Source {
    /// A source with a path and a text, e.g. for a policy set that is not on disk.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Reads `path`.
    ///
    /// # Errors
    ///
    /// [`LoadError::Read`] when the file cannot be read as UTF-8 text; [`LoadError::Untrusted`]
    /// when someone other than its owner could change it (see the module documentation).
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        only_owner_writes(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Source::new(path, text))
    }

    /// The policy files at `path`: the file itself, or every `*.cedar` file directly in the
    /// folder, in file name order (byte order of the names).
    ///
    /// # Errors
    ///
    /// [`LoadError::Read`] when a file or the folder cannot be read; [`LoadError::NoPolicies`]
    /// for a folder without `.cedar` files; [`LoadError::Untrusted`] when someone other than its
    /// owner could change the folder or a file (see the module documentation).
    pub fn read_policies(path: &Path) -> Result<Vec<Self>, LoadError> {
        let read_error = |source| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        if !std::fs::metadata(path).map_err(read_error)?.is_dir() {
            return Ok(vec![Source::read(path)?]);
        }
        only_owner_writes(path)?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_error)? {
            let file = entry.map_err(read_error)?.path();
            if file.extension().is_some_and(|e| e == "cedar") && file.is_file() {
                files.push(file);
            }
        }
        if files.is_empty() {
            return Err(LoadError::NoPolicies {
                path: path.to_owned(),
            });
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files.iter().map(|file| Source::read(file)).collect()
    }
}

/// Refuses `path` unless only its owner, root or the user the server runs as, can change it or a
/// folder above it (see the module documentation). Unix only: elsewhere nothing is checked.
#[cfg(unix)]
fn only_owner_writes(path: &Path) -> Result<(), LoadError> {
    use std::os::unix::fs::MetadataExt;

    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let given = std::path::absolute(path).map_err(read_error)?;
    let resolved = std::fs::canonicalize(path).map_err(read_error)?;
    // SAFETY: geteuid has no preconditions and cannot fail (POSIX.1-2017).
    let server_uid = unsafe { libc::geteuid() };
    let folders_above = given
        .ancestors()
        .skip(1)
        .chain(resolved.ancestors().skip(1));
    for (checked, is_target) in [(resolved.as_path(), true)]
        .into_iter()
        .chain(folders_above.map(|folder| (folder, false)))
    {
        let metadata = std::fs::metadata(checked).map_err(|source| LoadError::Read {
            path: checked.to_owned(),
            source,
        })?;
        let untrusted = |why: String| LoadError::Untrusted {
            path: checked.to_owned(),
            why,
        };
        let owner = metadata.uid();
        if owner != 0 && owner != server_uid {
            return Err(untrusted(format!(
                "it is owned by uid {owner}, neither root nor the user this server runs as \
                 (uid {server_uid})"
            )));
        }
        let mode = metadata.mode() & 0o7777;
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if others_write && (is_target || !sticky) {
            return Err(untrusted(format!(
                "it has mode {mode:04o}: its group or other users can write {}; only its owner \
                 may (chmod go-w)",
                if is_target { "it" } else { "in this folder" }
            )));
        }
    }
    Ok(())
}

/// Nothing is checked outside Unix (see the module documentation).
#[cfg(not(unix))]
fn only_owner_writes(_path: &Path) -> Result<(), LoadError> {
    Ok(())
}

/// A 1-based line and column (in characters) in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, counted in characters (Unicode scalar values).
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to the text).
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One problem in a policy or schema file: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub path: PathBuf,
    /// Where in the file; `None` when Cedar names no place (the problem is the whole file).
    pub position: Option<Position>,
    /// What is wrong, with Cedar's help text when it gives one.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A policy or schema file or folder, or a folder above it, that someone other than its
    /// owner could change, or whose owner is neither root nor the server's user (Unix only; see
    /// the module documentation). Nothing in it is read.
    #[error("refusing `{}`: {why}", path.display())]
    Untrusted {
        /// The file or folder that failed the check.
        path: PathBuf,
        /// Its owner or mode, and what is wrong with it.
        why: String,
    },
    /// A folder holds no `.cedar` file.
    #[error("no `.cedar` files in `{}`", path.display())]
    NoPolicies {
        /// The folder.
        path: PathBuf,
    },
    /// The schema does not parse or is not a valid schema.
    #[error("invalid schema\n{}", lines(diagnostics))]
    Schema {
        /// Every problem found in the schema.
        diagnostics: Vec<Diagnostic>,
    },
    /// The policies do not parse, carry bad annotations, or fail strict validation.
    #[error("invalid policies\n{}", lines(diagnostics))]
    Policies {
        /// Every problem found in the policies.
        diagnostics: Vec<Diagnostic>,
    },
}

impl LoadError {
    /// Every problem found, with file, line and column; empty for read errors.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Schema { diagnostics } | LoadError::Policies { diagnostics } => diagnostics,
            LoadError::Read { .. } | LoadError::NoPolicies { .. } | LoadError::Untrusted { .. } => {
                &[]
            }
        }
    }
}

fn lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cedar's diagnostics (the error and every related one) as [`Diagnostic`]s in `source`.
fn cedar_diagnostics(error: &dyn miette::Diagnostic, source: &Source) -> Vec<Diagnostic> {
    let mut found = vec![one_diagnostic(error, source)];
    if let Some(related) = error.related() {
        for error in related {
            found.extend(cedar_diagnostics(error, source));
        }
    }
    found
}

fn one_diagnostic(error: &dyn miette::Diagnostic, source: &Source) -> Diagnostic {
    let position = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| Position::of_offset(&source.text, label.offset()));
    let mut message = error.to_string();
    if let Some(help) = error.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    Diagnostic {
        path: source.path.clone(),
        position,
        message,
    }
}

/// What the response needs to know about one policy, read from its annotations at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PolicyMeta {
    /// `@id`, or `<file name>:<line>` without one; the Cedar policy id too.
    pub id: String,
    /// Position in the policy set: files in name order, policies in file order.
    pub order: usize,
    pub effect: Effect,
    /// `@verdict("DEFER")`: this `forbid` asks for a human instead of denying.
    pub defer: bool,
    /// `@reason`.
    pub reason: Option<String>,
    /// `@severity`: `HIGH`, `MEDIUM` or `LOW`.
    pub severity: Option<&'static str>,
    /// `@risk_score`: 0–100.
    pub risk_score: Option<u8>,
    /// `@questions`, one per non-blank line.
    pub questions: Vec<String>,
}

/// A parsed, checked and validated policy set.
#[derive(Debug)]
pub(super) struct Loaded {
    pub schema: Schema,
    pub policies: PolicySet,
    /// The `permit` policies alone, to tell a `DEFER` from a `NO_PERMIT` (`CedarPolicy::decide`).
    pub permits: PolicySet,
    /// By position in the policy set.
    pub meta: Vec<PolicyMeta>,
}

/// Parses `schema` and `policies`, checks the annotations and validates in strict mode.
pub(super) fn load(policies: &[Source], schema: &Source) -> Result<Loaded, LoadError> {
    let schema_parsed = Schema::from_cedarschema_str(&schema.text)
        .map(|(schema, _warnings)| schema)
        .map_err(|error| LoadError::Schema {
            diagnostics: cedar_diagnostics(&error, schema),
        })?;

    let mut diagnostics = Vec::new();
    let mut parsed: Vec<(Policy, PolicyMeta, &Source, Position)> = Vec::new();
    for source in policies {
        match parse_in_order(&source.text) {
            Ok(file_policies) => {
                for (policy, position) in file_policies {
                    match meta(&policy, source, position, parsed.len()) {
                        Ok(meta) => parsed.push((policy, meta, source, position)),
                        Err(problem) => diagnostics.push(problem),
                    }
                }
            }
            Err(FileError::Parse(errors)) => {
                diagnostics.extend(cedar_diagnostics(&*errors, source));
            }
            Err(FileError::Template(position)) => diagnostics.push(Diagnostic {
                path: source.path.clone(),
                position: Some(position),
                message: "templates (policies with `?principal` or `?resource`) are not \
                          supported"
                    .to_owned(),
            }),
        }
    }

    let mut set = PolicySet::new();
    let mut permits = PolicySet::new();
    let mut sources_by_id = HashMap::new();
    for (policy, meta, source, position) in &parsed {
        let policy = policy.new_id(PolicyId::new(&meta.id));
        if set.add(policy.clone()).is_err() {
            diagnostics.push(Diagnostic {
                path: source.path.clone(),
                position: Some(*position),
                message: format!("a second policy with the id `{}`", meta.id),
            });
            continue;
        }
        sources_by_id.insert(meta.id.as_str(), *source);
        if meta.effect == Effect::Permit {
            // Cannot fail: the id is new to `set`, so it is new to its subset `permits`.
            let _ = permits.add(policy);
        }
    }
    if !diagnostics.is_empty() {
        return Err(LoadError::Policies { diagnostics });
    }

    let validation = Validator::new(schema_parsed.clone()).validate(&set, ValidationMode::Strict);
    for error in validation.validation_errors() {
        let id = error.policy_id().to_string();
        let source = sources_by_id.get(id.as_str()).copied().unwrap_or(schema);
        diagnostics.extend(cedar_diagnostics(error, source));
    }
    if !diagnostics.is_empty() {
        return Err(LoadError::Policies { diagnostics });
    }
    Ok(Loaded {
        schema: schema_parsed,
        policies: set,
        permits,
        meta: parsed.into_iter().map(|(_, meta, _, _)| meta).collect(),
    })
}

/// Why one file yields no policies.
enum FileError {
    Parse(Box<cedar_policy::ParseErrors>),
    Template(Position),
}

/// The static policies of one file, in file order, each with where it starts.
///
/// Cedar names the policies of a text `policy0`, `policy1`, … in the order they appear, and keeps
/// each one's text; searching for those texts one after the other, each after the previous one,
/// finds where each policy starts.
fn parse_in_order(text: &str) -> Result<Vec<(Policy, Position)>, FileError> {
    let set: PolicySet = text
        .parse()
        .map_err(|errors| FileError::Parse(Box::new(errors)))?;
    if let Some(template) = set.templates().next() {
        let start = text.find(&template.to_cedar()).unwrap_or(0);
        return Err(FileError::Template(Position::of_offset(text, start)));
    }
    let mut numbered: Vec<(usize, &Policy)> = set
        .policies()
        .map(|policy| {
            let number = policy
                .id()
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (number, policy)
        })
        .collect();
    numbered.sort_by_key(|&(number, _)| number);
    let mut cursor = 0;
    let mut in_order = Vec::with_capacity(numbered.len());
    for (_, policy) in numbered {
        let own_text = policy.to_cedar().unwrap_or_default();
        let start = text[cursor..]
            .find(own_text.as_str())
            .map_or(cursor, |at| cursor + at);
        cursor = (start + own_text.len()).min(text.len());
        in_order.push((policy.clone(), Position::of_offset(text, start)));
    }
    Ok(in_order)
}

/// Reads and checks the annotations of `policy`, which starts at `position` in `source`.
fn meta(
    policy: &Policy,
    source: &Source,
    position: Position,
    order: usize,
) -> Result<PolicyMeta, Diagnostic> {
    let problem = |message: String| Diagnostic {
        path: source.path.clone(),
        position: Some(position),
        message,
    };
    let file_name = source.path.file_name().map_or_else(
        || source.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let id = match policy.annotation("id") {
        Some(id) if id.trim().is_empty() => {
            return Err(problem("`@id` is empty".to_owned()));
        }
        Some(id) => id.to_owned(),
        None => format!("{file_name}:{}", position.line),
    };
    let effect = policy.effect();
    let defer = match policy.annotation("verdict") {
        None => false,
        Some("DEFER") if effect == Effect::Forbid => true,
        Some("DEFER") => {
            return Err(problem(format!(
                "`@verdict(\"DEFER\")` on `permit` policy `{id}`: only a `forbid` can defer"
            )));
        }
        Some(other) => {
            return Err(problem(format!(
                "`@verdict(\"{other}\")` in policy `{id}`: the only verdict a policy can name is \
                 `DEFER`"
            )));
        }
    };
    let severity = match policy.annotation("severity") {
        None => None,
        Some("HIGH") => Some("HIGH"),
        Some("MEDIUM") => Some("MEDIUM"),
        Some("LOW") => Some("LOW"),
        Some(other) => {
            return Err(problem(format!(
                "`@severity(\"{other}\")` in policy `{id}`: expected `HIGH`, `MEDIUM` or `LOW`"
            )));
        }
    };
    let risk_score = match policy.annotation("risk_score") {
        None => None,
        Some(text) => match text.trim().parse::<u8>() {
            Ok(score) if score <= 100 => Some(score),
            _ => {
                return Err(problem(format!(
                    "`@risk_score(\"{text}\")` in policy `{id}`: expected a whole number from 0 \
                     to 100"
                )));
            }
        },
    };
    Ok(PolicyMeta {
        id,
        order,
        effect,
        defer,
        reason: policy.annotation("reason").map(str::to_owned),
        severity,
        risk_score,
        questions: policy
            .annotation("questions")
            .map(|questions| {
                questions
                    .lines()
                    .map(str::trim)
                    .filter(|q| !q.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let text = "ab\nçd\n";
        assert_eq!(
            Position::of_offset(text, 0),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            Position::of_offset(text, 3),
            Position { line: 2, column: 1 }
        );
        // After the two-byte `ç`: the second character of line 2.
        assert_eq!(
            Position::of_offset(text, 5),
            Position { line: 2, column: 2 }
        );
        // Inside `ç`, and past the end: clamped.
        assert_eq!(
            Position::of_offset(text, 4),
            Position { line: 2, column: 1 }
        );
        assert_eq!(
            Position::of_offset(text, 99),
            Position { line: 3, column: 1 }
        );
    }
}
