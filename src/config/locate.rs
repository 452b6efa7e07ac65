//! Where each key and value of a YAML document starts, by key path.
//!
//! serde reports *what* is wrong and the key path (`routes[1].upstream`), but errors
//! found after deserialization (an unknown upstream, a duplicate route) and errors from
//! one section deserialized on its own have no line. This index maps the same key paths
//! back to `line:column`, so every message can point into the file.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The deepest nesting of mappings and lists a config file may have. A complete
/// `gateway.yaml` needs 7 (`routes[].stream.rules[].replace`); deeper files are
/// refused before the YAML loader sees them, since its cost grows with the square of
/// the nesting depth.
pub(crate) const MAX_DEPTH: usize = 64;

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The line and column (in characters) of byte `offset` of `text`.
    pub fn of_offset(text: &[u8], offset: usize) -> Position {
        let before = &text[..offset.min(text.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        Position {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            column,
        }
    }
}

/// Positions of every key and value in a document, by key path in the form serde uses:
/// `routes[1].request.method`.
#[derive(Debug, Default)]
pub(super) struct Locations {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
    /// Where a key is written a second time in its mapping: the loader refuses the
    /// file, and says only which mapping.
    repeated: HashMap<String, Position>,
}

impl Locations {
    /// Indexes the first document of `text`; a document the YAML parser rejects gives
    /// an empty index (the syntax error itself is reported by the loader).
    ///
    /// `Err` is where a mapping or list first nests deeper than [`MAX_DEPTH`]: the
    /// index stops there, so a pathological file costs no more than its first
    /// [`MAX_DEPTH`] levels. (The events are pulled one by one rather than pushed by
    /// the parser's recursive loader, which would need a stack as deep as the file.)
    pub(super) fn index(text: &str) -> Result<Locations, Position> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, mark) = match parser.next_token() {
                Ok(next) => next,
                // The scanner's own bound on flow nesting (`[[[...`), which it may
                // reach while scanning ahead of the events.
                Err(error) if error.info() == "recursion limit exceeded" => {
                    return Err(position(*error.marker()));
                }
                Err(_) => return Ok(Locations::default()),
            };
            match event {
                Event::DocumentEnd | Event::StreamEnd => return Ok(builder.locations),
                Event::MappingStart(..) | Event::SequenceStart(..)
                    if builder.stack.len() >= MAX_DEPTH =>
                {
                    return Err(position(mark));
                }
                event => builder.on_event(event, mark),
            }
        }
    }

    /// Where the value at `path` starts; for a missing value, the nearest enclosing one.
    pub(super) fn value(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.values.get(path) {
                return Some(*position);
            }
            path = parent(path)?;
        }
    }

    /// Where the key that ends `path` is written (`routes[0].match` -> the `match` word).
    pub(super) fn key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied()
    }

    /// Where the key that ends `path` is written again, if it is.
    pub(super) fn repeated_key(&self, path: &str) -> Option<Position> {
        self.repeated.get(path).copied()
    }
}

/// `routes[1].request` -> `routes[1]` -> `routes` -> the root (`""`) -> `None`.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

enum Container {
    Mapping {
        path: String,
        key: Option<String>,
        seen_key: bool,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Container>,
    locations: Locations,
}

/// `parent.key`, or `key` at the top level: the key path notation of serde.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// Path of the node that starts now, or `None` when the node is a mapping key.
    fn path_of_next_node(&mut self, event: &Event, position: Position) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Container::Sequence { path, next }) => {
                let node = format!("{path}[{next}]");
                *next += 1;
                Some(node)
            }
            Some(Container::Mapping {
                path,
                key,
                seen_key,
            }) => {
                if let Some(key) = key.take() {
                    Some(join(path, &key))
                } else {
                    let name = match event {
                        Event::Scalar(name, ..) => name.clone(),
                        _ => "?".to_owned(),
                    };
                    let key_path = join(path, &name);
                    match self.locations.keys.entry(key_path) {
                        Entry::Occupied(first) => {
                            let repeated = first.key().clone();
                            self.locations.repeated.entry(repeated).or_insert(position);
                        }
                        Entry::Vacant(first) => {
                            first.insert(position);
                        }
                    }
                    // The parser marks a block mapping where its first value starts;
                    // an operator reads the mapping as starting at its first key.
                    if !*seen_key {
                        *seen_key = true;
                        self.locations.values.insert(path.clone(), position);
                    }
                    *key = Some(name);
                    None
                }
            }
        }
    }
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let position = position(mark);
        match event {
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(path) = self.path_of_next_node(&event, position) {
                    self.locations.values.insert(path, position);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A container used as a mapping key is not something gateway.yaml
                // has; it is indexed under `?` so the walk stays in step.
                let path = match self.path_of_next_node(&event, position) {
                    Some(path) => path,
                    None => match self.stack.last_mut() {
                        Some(Container::Mapping { path, key, .. }) => {
                            *key = None;
                            join(path, "?")
                        }
                        _ => String::new(),
                    },
                };
                self.locations.values.insert(path.clone(), position);
                self.stack.push(match event {
                    Event::MappingStart(..) => Container::Mapping {
                        path,
                        key: None,
                        seen_key: false,
                    },
                    _ => Container::Sequence { path, next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: 0.0.0.0:8080
upstreams:
  demo:
    demo: {}
routes:
  - name: chat
    match: { path_prefix: /api/stream, methods: [GET, POST] }
    upstream: demo
  - name: other
    upstream: nowhere
";

    #[allow(clippy::unnecessary_wraps)] // compared with the `Option`s lookups return
    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn values_by_key_path() {
        let locations = Locations::index(DOC).unwrap();
        assert_eq!(locations.value("listen"), at(1, 9));
        assert_eq!(locations.value("upstreams.demo.demo"), at(4, 11));
        assert_eq!(locations.value("routes[0].name"), at(6, 11));
        assert_eq!(locations.value("routes[0].match.path_prefix"), at(7, 27));
        assert_eq!(locations.value("routes[0].match.methods[1]"), at(7, 55));
        assert_eq!(locations.value("routes[1].upstream"), at(10, 15));
    }

    #[test]
    fn keys_by_key_path() {
        let locations = Locations::index(DOC).unwrap();
        assert_eq!(locations.key("routes[1].upstream"), at(10, 5));
        assert_eq!(locations.key("routes[0].match"), at(7, 5));
    }

    #[test]
    fn missing_paths_fall_back_to_the_enclosing_node() {
        let locations = Locations::index(DOC).unwrap();
        assert_eq!(locations.value("routes[1].request.method"), at(9, 5));
        assert_eq!(locations.value("nothing.here"), at(1, 1));
    }

    #[test]
    fn broken_yaml_gives_an_empty_index() {
        let locations = Locations::index("routes: [\n").unwrap();
        assert_eq!(locations.value("routes"), None);
    }

    #[test]
    fn nesting_past_the_limit_is_located_without_reading_further() {
        let deep = format!("routes: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(Locations::index(&deep).unwrap_err().line, 1);
        let block = (0..70)
            .map(|i| format!("{}- a:\n", "  ".repeat(i)))
            .collect::<Vec<_>>()
            .concat();
        let error = Locations::index(&format!("routes:\n{block}")).unwrap_err();
        assert!(error.line > 30, "{error:?}");
        let fine = format!("routes: {}{}\n", "[".repeat(63), "]".repeat(63));
        assert!(Locations::index(&fine).is_ok());
    }
}
