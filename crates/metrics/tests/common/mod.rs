//! A small, strict reader of the OpenMetrics text the endpoint produces, so tests check parsed
//! names, labels and values rather than substrings.

#![allow(dead_code)]

use std::collections::BTreeMap;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: sample lines and the declared type of each family.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Line>,
    pub types: BTreeMap<String, String>,
    pub units: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Line> = self
            .samples
            .iter()
            .filter(|l| l.name == name)
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "want exactly one {name}{labels:?}, got {found:?}"
        );
        found[0].value
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Line> {
        self.samples.iter().filter(|l| l.name == name).collect()
    }
}

/// Parses the whole text; panics on any line it does not understand or a missing `# EOF`.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    let mut saw_eof = false;
    for line in text.lines() {
        assert!(!saw_eof, "text after # EOF: {line:?}");
        if line == "# EOF" {
            saw_eof = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            out.types.insert(name.to_string(), kind.to_string());
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').expect("UNIT line");
            out.units.insert(name.to_string(), unit.to_string());
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            out.samples.push(parse_sample(line));
        }
    }
    assert!(saw_eof, "exposition must end with # EOF");
    out
}

fn parse_sample(line: &str) -> Line {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(&rest[1..]);
        labels = parsed;
        rest = after;
    }
    let value = rest
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line:?}"));
    Line {
        name,
        labels,
        value,
    }
}

/// Parses `k="v",...}` and returns the labels and the text after the closing brace.
fn parse_labels(mut s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return (labels, after);
        }
        s = s.strip_prefix(',').unwrap_or(s);
        let (key, after_key) = s.split_once("=\"").expect("label key");
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = &after_key[end + 1..];
    }
}
