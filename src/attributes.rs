//! Message attributes: a small multimap with MIME-canonical keys ([`Attributes`], also at
//! the crate root), and its iterators.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::Error;

/// Returns the canonical form of an attribute key, exactly as Go's
/// `textproto.CanonicalMIMEHeaderKey` does.
///
/// The first letter and every letter after a hyphen are upper-cased, the other letters
/// lower-cased. A key holding a space or any byte that is not an HTTP token character
/// (including every non-ASCII character) is returned unchanged. An already canonical key is
/// borrowed, not copied.
///
/// # Examples
///
/// ```
/// use msgio::canonical_key;
/// use std::borrow::Cow;
///
/// assert_eq!(canonical_key("content-type"), "Content-Type");
/// assert_eq!(canonical_key("foo-bar_baz"), "Foo-Bar_baz");
/// assert_eq!(canonical_key("a B"), "a B"); // a space: left as it is
/// assert!(matches!(canonical_key("Content-Type"), Cow::Borrowed(_)));
/// ```
pub fn canonical_key(key: &str) -> Cow<'_, str> {
    let wrong_case = match letters_digits_dashes_wrong_case(key.as_bytes()) {
        Some(wrong) => wrong,
        None => match token_bytes_wrong_case(key.as_bytes()) {
            Some(wrong) => wrong,
            // Go keeps keys with a space or a non-token byte as they are.
            None => return Cow::Borrowed(key),
        },
    };
    if wrong_case {
        Cow::Owned(canonicalize(key))
    } else {
        Cow::Borrowed(key)
    }
}

/// For a key of ASCII letters, digits and `-` (most keys): whether a letter is in the
/// case its place does not take (upper-case at the start and after `-`, lower-case
/// elsewhere). `None` for any other key. Eight bytes at a time.
fn letters_digits_dashes_wrong_case(key: &[u8]) -> Option<bool> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// The high bit of each byte of `w` (ASCII bytes only) within `lo..=hi`: no sum
    /// carries into the next byte.
    const fn within(w: u64, lo: u8, hi: u8) -> u64 {
        let at_least_lo = w.wrapping_add(ONES * (0x80 - lo as u64));
        let above_hi = w.wrapping_add(ONES * (0x7f - hi as u64));
        at_least_lo & !above_hi & HIGH
    }
    /// One word of the key, its bytes where `valid` has their high bits: the letters in
    /// the wrong case, given the high bit of byte 0 when the byte before it is `-` or
    /// there is none; and that bit for the word after. `None` for a byte of another kind.
    fn word(w: u64, valid: u64, starts_next: u64) -> Option<(u64, u64)> {
        if w & HIGH != 0 {
            return None;
        }
        let lower = within(w, b'a', b'z');
        let upper = within(w, b'A', b'Z');
        let dash = within(w, b'-', b'-');
        if (lower | upper | dash | within(w, b'0', b'9')) & valid != valid {
            return None;
        }
        // Bytes at the start or after a `-` take upper case; the others lower.
        let starts = (dash << 8) | starts_next;
        Some((((lower & starts) | (upper & !starts)) & valid, dash >> 56))
    }
    let (mut wrong, mut starts_next) = (0, 0x80);
    let mut rest = key;
    while let Some((head, tail)) = rest.split_first_chunk::<8>() {
        let (w, next) = word(u64::from_le_bytes(*head), HIGH, starts_next)?;
        (wrong, starts_next, rest) = (wrong | w, next, tail);
    }
    if !rest.is_empty() {
        // The last bytes: the key's last eight, shifted past those already read, when it
        // has eight; else gathered one by one.
        let w = match key.last_chunk::<8>() {
            Some(last) => u64::from_le_bytes(*last) >> (8 * (8 - rest.len())),
            None => rest.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b)),
        };
        wrong |= word(w, HIGH >> (8 * (8 - rest.len())), starts_next)?.0;
    }
    Some(wrong != 0)
}

/// [`letters_digits_dashes_wrong_case`] for any key, a byte at a time through
/// [`BYTE_CLASS`]: `None` when a byte is not a token byte.
fn token_bytes_wrong_case(key: &[u8]) -> Option<bool> {
    let (mut missing, mut wrong) = (0u8, 0u8);
    let mut unwanted = LOWER;
    for &c in key {
        let class = BYTE_CLASS[usize::from(c)];
        missing |= !class;
        wrong |= class & unwanted;
        // LOWER after `-`, UPPER after anything else.
        unwanted = UPPER >> ((class / DASH) & 1);
    }
    (missing & TOKEN == 0).then_some(wrong != 0)
}

const TOKEN: u8 = 1;
const LOWER: u8 = 2;
const UPPER: u8 = 4;
const DASH: u8 = 8;

/// For each byte: [`TOKEN`] for an RFC 7230 `tchar`, with [`LOWER`] or [`UPPER`] for an
/// ASCII letter and [`DASH`] for `-`.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = if b.is_ascii_lowercase() {
            TOKEN | LOWER
        } else if b.is_ascii_uppercase() {
            TOKEN | UPPER
        } else if b == b'-' {
            TOKEN | DASH
        } else if is_token_byte(b) {
            TOKEN
        } else {
            0
        };
        c += 1;
    }
    table
};

/// Slow path of [`canonical_key`]: `key`, all token bytes, with its letters in the case
/// their places take.
fn canonicalize(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = true;
    for c in key.bytes() {
        let c = if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        };
        out.push(char::from(c));
        upper = c == b'-';
    }
    out
}

/// Whether `c` is an RFC 7230 `tchar`.
const fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The attributes of a message: a multimap from canonical keys to string values.
///
/// Keys are canonicalized with [`canonical_key`] when stored and when looked up, so every
/// method takes keys in any case. A key can hold several values (`add`); they keep the order
/// in which they were added. Cloning is cheap: the entries are shared until one side changes
/// them.
///
/// # Examples
///
/// ```
/// use msgio::Attributes;
///
/// let mut attrs = Attributes::new();
/// attrs.set("content-type", "application/json");
/// attrs.add("x-tag", "a");
/// attrs.add("X-TAG", "b");
///
/// assert_eq!(attrs.get("Content-Type"), Some("application/json"));
/// assert_eq!(attrs.get_all("x-tag").collect::<Vec<_>>(), ["a", "b"]);
/// assert_eq!(attrs.len(), 2); // two keys
/// assert!(attrs.contains("X-Tag"));
///
/// for (key, value) in &attrs {
///     println!("{key}: {value}");
/// }
/// ```
#[derive(Clone, Default)]
pub struct Attributes {
    /// `None` stands for no entries, so that empty attributes never allocate.
    table: Option<Arc<Table>>,
}

/// Every key and value in one string, and where each entry's key and value are in it:
/// building attributes costs a few allocations however many they are, and reading them
/// touches a few cache lines, where a string per key and per value would cost one of each
/// apiece.
#[derive(Clone, Default)]
struct Table {
    text: Text,
    /// Entries grouped by key (all values of one key are adjacent, and share the key's
    /// bytes), in first-insertion order.
    entries: Entries,
    /// Bytes of `text` no entry points at any more.
    garbage: usize,
}

/// Bytes of keys and values a table keeps in itself before the text takes a string of its
/// own: most messages' attributes fit, and then the attributes are one allocation.
const INLINE_TEXT: usize = 96;

/// A table's text: whole `&str`s appended one after another, so that every entry's key and
/// value (and any run of them) is valid UTF-8.
#[derive(Clone)]
enum Text {
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    Heap(String),
}

impl Default for Text {
    fn default() -> Self {
        Text::Inline {
            len: 0,
            bytes: [0; INLINE_TEXT],
        }
    }
}

impl Text {
    /// Empty text with room for `bytes` bytes.
    fn with_capacity(bytes: usize) -> Self {
        if bytes <= INLINE_TEXT {
            Text::default()
        } else {
            Text::Heap(String::with_capacity(bytes))
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Text::Heap(s) => s.as_bytes(),
        }
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// All the text. Inline, it is checked to be UTF-8 (it always is: whole strings were
    /// copied in), which keeps this module free of `unsafe`: an iterator asks once for its
    /// whole walk rather than once a key and once a value.
    fn as_str(&self) -> &str {
        match self {
            Text::Heap(s) => s,
            Text::Inline { .. } => std::str::from_utf8(self.bytes()).unwrap_or(""),
        }
    }

    /// The text at `range`, between two boundaries of appended strings: checked alone when
    /// inline, cheaper than the whole text for one value.
    fn get(&self, range: (usize, usize)) -> &str {
        match self {
            Text::Heap(s) => slice(s, range),
            Text::Inline { .. } => self
                .bytes()
                .get(range.0..range.1)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or(""),
        }
    }

    fn push_str(&mut self, s: &str) {
        match self {
            Text::Inline { len, bytes } => {
                let at = usize::from(*len);
                match bytes.get_mut(at..at + s.len()) {
                    Some(room) => {
                        room.copy_from_slice(s.as_bytes());
                        // At most INLINE_TEXT, which fits a u8.
                        *len = (at + s.len()) as u8;
                    }
                    None => {
                        let mut heap = String::with_capacity((2 * (at + s.len())).max(128));
                        heap.push_str(&String::from_utf8_lossy(&bytes[..at]));
                        heap.push_str(s);
                        *self = Text::Heap(heap);
                    }
                }
            }
            Text::Heap(heap) => heap.push_str(s),
        }
    }
}

/// The part of a table's `text` at `range` (a key's or a value's).
fn slice(text: &str, (start, end): (usize, usize)) -> &str {
    text.get(start..end).unwrap_or("")
}

/// Where an entry's key and value are in [`Table::text`].
#[derive(Clone, Copy, Default)]
struct Entry {
    key: (usize, usize),
    value: (usize, usize),
}

/// How many entries a table holds without a list of its own: most messages carry a few
/// attributes, and then the table is one allocation less.
const INLINE: usize = 4;

/// A table's entries: in the table itself up to [`INLINE`], in a `Vec` beyond.
#[derive(Clone)]
enum Entries {
    Inline { len: usize, items: [Entry; INLINE] },
    Heap(Vec<Entry>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Inline {
            len: 0,
            items: [Entry::default(); INLINE],
        }
    }
}

impl Entries {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Entries::Inline { len, items } => &items[..*len],
            Entries::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Entry] {
        match self {
            Entries::Inline { len, items } => &mut items[..*len],
            Entries::Heap(v) => v,
        }
    }

    /// The list, moved out of the table first if it was inline and full.
    fn spill_if_full(&mut self) {
        if let Entries::Inline { len, items } = self {
            if *len == INLINE {
                let mut v = Vec::with_capacity(INLINE * 2);
                v.extend_from_slice(&items[..]);
                *self = Entries::Heap(v);
            }
        }
    }

    fn push(&mut self, entry: Entry) {
        self.spill_if_full();
        match self {
            Entries::Inline { len, items } => {
                items[*len] = entry;
                *len += 1;
            }
            Entries::Heap(v) => v.push(entry),
        }
    }

    fn insert(&mut self, at: usize, entry: Entry) {
        self.spill_if_full();
        match self {
            Entries::Inline { len, items } => {
                items.copy_within(at..*len, at + 1);
                items[at] = entry;
                *len += 1;
            }
            Entries::Heap(v) => v.insert(at, entry),
        }
    }

    fn remove_range(&mut self, range: std::ops::Range<usize>) {
        match self {
            Entries::Inline { len, items } => {
                items.copy_within(range.end..*len, range.start);
                *len -= range.len();
            }
            Entries::Heap(v) => {
                v.drain(range);
            }
        }
    }
}

impl std::ops::Deref for Entries {
    type Target = [Entry];
    fn deref(&self) -> &[Entry] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Entries {
    fn deref_mut(&mut self) -> &mut [Entry] {
        self.as_mut_slice()
    }
}

/// Whether `entry`'s key in `text` is `key`: lengths first, so that most keys are told
/// apart without comparing their bytes (and no character boundary is checked).
fn key_is(text: &[u8], entry: &Entry, key: &[u8]) -> bool {
    let (start, end) = entry.key;
    end.wrapping_sub(start) == key.len() && text.get(start..end).is_some_and(|k| same_bytes(k, key))
}

/// Whether `a` and `b` hold the same bytes. Keys and routed values are short: up to 16
/// bytes they are compared as two overlapping words each (loads and a compare), where
/// slice equality calls `memcmp`, several times the instructions at these lengths.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_ne_bytes(s.get(at..at + 8)?.try_into().ok()?))
    }
    fn half(s: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(s.get(at..at + 4)?.try_into().ok()?))
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

impl Table {
    /// An entry's value (checking only its own bytes when the text is inline).
    fn value(&self, entry: &Entry) -> &str {
        self.text.get(entry.value)
    }

    /// Whether `entry`'s key is `key`: lengths first, so that most keys are told apart
    /// without comparing their bytes (and no character boundary is checked).
    fn has_key(&self, entry: &Entry, key: &str) -> bool {
        key_is(self.text.bytes(), entry, key.as_bytes())
    }

    /// The first entry whose key is `key`: the text is found once for the whole walk.
    fn find(&self, key: &str) -> Option<&Entry> {
        let text = self.text.bytes();
        self.entries
            .iter()
            .find(|e| key_is(text, e, key.as_bytes()))
    }

    /// Empties a table whose text and entries are inline; whether it was such a table.
    #[cfg(feature = "mem")]
    fn clear_inline(&mut self) -> bool {
        match (&mut self.text, &mut self.entries) {
            (Text::Inline { len, .. }, Entries::Inline { len: entries, .. }) => {
                *len = 0;
                *entries = 0;
                self.garbage = 0;
                true
            }
            _ => false,
        }
    }

    fn push(&mut self, s: &str) -> (usize, usize) {
        let start = self.text.len();
        self.text.push_str(s);
        (start, self.text.len())
    }

    /// Adds an entry for a key the table does not hold yet.
    fn push_entry(&mut self, key: &str, value: &str) {
        let key = self.push(key);
        let value = self.push(value);
        self.entries.push(Entry { key, value });
    }

    /// The bytes the values of `entries` take in the text.
    fn value_bytes(entries: &[Entry]) -> usize {
        entries.iter().map(|e| e.value.1 - e.value.0).sum()
    }

    /// Counts `bytes` of the text as unused, and rewrites the text once more than half of
    /// it is.
    fn forget(&mut self, bytes: usize) {
        self.garbage += bytes;
        if self.garbage >= 64 && 2 * self.garbage > self.text.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut text = Text::with_capacity(self.text.len() - self.garbage);
        let mut last_key: Option<((usize, usize), (usize, usize))> = None;
        let old = self.text.as_str();
        for e in self.entries.as_mut_slice() {
            let key = match last_key {
                Some((old, new)) if old == e.key => new,
                _ => {
                    let start = text.len();
                    text.push_str(slice(old, e.key));
                    let new = (start, text.len());
                    last_key = Some((e.key, new));
                    new
                }
            };
            let start = text.len();
            text.push_str(slice(old, e.value));
            *e = Entry {
                key,
                value: (start, text.len()),
            };
        }
        self.text = text;
        self.garbage = 0;
    }
}

/// An emptied attribute table whose allocation is kept for another message's attributes:
/// the in-memory transport hands the tables of acknowledged messages back to its
/// publishers, so that a table is allocated and freed on the publisher's thread rather than
/// allocated on one thread and freed on another (the allocator's slow path).
#[cfg(feature = "mem")]
pub(crate) struct SpareTable(Arc<Table>);

impl Attributes {
    /// Empty attributes. Does not allocate.
    pub fn new() -> Self {
        Attributes { table: None }
    }

    /// Empty attributes that fill `spare`'s table instead of allocating one.
    #[cfg(feature = "mem")]
    pub(crate) fn with_spare(spare: SpareTable) -> Self {
        Attributes {
            table: Some(spare.0),
        }
    }

    /// These attributes' table, emptied, when nothing else shares it and it holds its text
    /// and entries inline (a larger one is freed as usual, so that no spare holds more
    /// than a table's own size).
    #[cfg(feature = "mem")]
    pub(crate) fn into_spare(self) -> Option<SpareTable> {
        let mut table = self.table?;
        Arc::get_mut(&mut table)?
            .clear_inline()
            .then_some(SpareTable(table))
    }

    /// The text every entry points into, checked once for an iterator's whole walk.
    fn text(&self) -> &str {
        self.table.as_deref().map_or("", |t| t.text.as_str())
    }

    fn entries(&self) -> &[Entry] {
        self.table.as_deref().map_or(&[], |t| t.entries.as_slice())
    }

    /// How many values there are, and the bytes of their keys and values together (a key
    /// counted once per value): what a transport sizes a message's encoding by, without
    /// reading the text.
    #[cfg_attr(not(any(feature = "redis", feature = "kafka")), allow(dead_code))]
    pub(crate) fn sizes(&self) -> (usize, usize) {
        let entries = self.entries();
        let bytes = entries
            .iter()
            .map(|e| (e.key.1 - e.key.0) + (e.value.1 - e.value.0))
            .sum();
        (entries.len(), bytes)
    }

    /// The table, to change (copied first if a clone shares it).
    fn table_mut(&mut self) -> &mut Table {
        Arc::make_mut(self.table.get_or_insert_with(|| Arc::new(Table::default())))
    }

    /// The index range holding the values of the canonical key `key`.
    fn group(&self, key: &str) -> Option<std::ops::Range<usize>> {
        let table = self.table.as_deref()?;
        let entries = &table.entries;
        let start = entries.iter().position(|e| table.has_key(e, key))?;
        // A group's entries share their key's bytes.
        let len = entries[start..]
            .iter()
            .take_while(|e| e.key == entries[start].key)
            .count();
        Some(start..start + len)
    }

    /// The first value of `key` (any case), if there is one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_canonical(&canonical_key(key))
    }

    /// The first value of `key`, which the caller has already canonicalized (a decorator's
    /// configured key): no canonicalization on the hot path.
    pub(crate) fn get_canonical(&self, key: &str) -> Option<&str> {
        let (table, entry) = self.first_canonical(key)?;
        Some(table.value(entry))
    }

    /// The bytes of the first value of `key`, already canonical: what
    /// [`get_canonical`](Attributes::get_canonical) gives, without checking them for UTF-8
    /// (they always are), for a caller that compares bytes.
    pub(crate) fn get_canonical_bytes(&self, key: &str) -> Option<&[u8]> {
        let (table, entry) = self.first_canonical(key)?;
        table.text.bytes().get(entry.value.0..entry.value.1)
    }

    /// The table and the first entry of the canonical key `key`.
    fn first_canonical(&self, key: &str) -> Option<(&Table, &Entry)> {
        debug_assert_eq!(canonical_key(key), key);
        let table = self.table.as_deref()?;
        Some((table, table.find(key)?))
    }

    /// Every value of `key` (any case), in the order they were added.
    pub fn get_all(&self, key: &str) -> GetAll<'_> {
        let range = self.group(&canonical_key(key)).unwrap_or(0..0);
        GetAll {
            text: self.text(),
            inner: self.entries()[range].iter(),
        }
    }

    /// Whether `key` (any case) has at least one value.
    pub fn contains(&self, key: &str) -> bool {
        self.group(&canonical_key(key)).is_some()
    }

    /// Sets `key` to the single value `value`, replacing any values it had.
    pub fn set(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let key = canonical_key(key.as_ref());
        let value = value.as_ref();
        match self.group(&key) {
            Some(range) => {
                let table = self.table_mut();
                let unused = Table::value_bytes(&table.entries[range.clone()]);
                table.entries[range.start].value = table.push(value);
                table.entries.remove_range(range.start + 1..range.end);
                table.forget(unused);
            }
            None => self.table_mut().push_entry(&key, value),
        }
    }

    /// Adds `value` to the values of `key`, after those it already has.
    pub fn add(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let key = canonical_key(key.as_ref());
        let value = value.as_ref();
        match self.group(&key) {
            Some(range) => {
                let table = self.table_mut();
                let key = table.entries[range.start].key;
                let value = table.push(value);
                table.entries.insert(range.end, Entry { key, value });
            }
            None => self.table_mut().push_entry(&key, value),
        }
    }

    /// Removes every value of `key` (any case) and returns the first one.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let range = self.group(&canonical_key(key))?;
        let table = self.table_mut();
        let first = table.value(&table.entries[range.start]).to_owned();
        let key = table.entries[range.start].key;
        let unused = Table::value_bytes(&table.entries[range.clone()]) + (key.1 - key.0);
        table.entries.remove_range(range);
        if table.entries.is_empty() {
            self.table = None;
        } else {
            table.forget(unused);
        }
        Some(first)
    }

    /// The number of distinct keys (as `len` of a Go `map[string][]string`).
    pub fn len(&self) -> usize {
        self.keys().count()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Removes every attribute.
    pub fn clear(&mut self) {
        self.table = None;
    }

    /// Every `(key, value)` pair; a key with several values appears once per value.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            text: self.text(),
            inner: self.entries().iter(),
        }
    }

    /// The distinct keys, in the order they were first added.
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            text: self.text(),
            inner: self.entries(),
        }
    }

    /// Each distinct key with its values, in the order the keys were first added: one walk,
    /// where [`keys`](Attributes::keys) then [`get_all`](Attributes::get_all) would
    /// canonicalize and look up every key again (what a transport encoding attributes
    /// uses).
    pub(crate) fn groups(&self) -> impl Iterator<Item = (&str, GetAll<'_>)> {
        let mut keys = self.keys();
        std::iter::from_fn(move || {
            let (key, group) = keys.next_group()?;
            Some((
                key,
                GetAll {
                    text: keys.text,
                    inner: group.iter(),
                },
            ))
        })
    }

    /// Converts to an `http::HeaderMap` (names lower-cased, as HTTP/2 requires).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAttribute`] naming the first key that is not a valid header name
    /// (empty, a space, a control or other non-token character) or the first value that a
    /// header cannot carry (CR, LF, NUL or another control character except tab).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut attrs = msgio::Attributes::new();
    /// attrs.add("X-Tag", "a");
    /// attrs.add("X-Tag", "b");
    /// let headers = attrs.to_header_map()?;
    /// assert_eq!(headers.get_all("x-tag").iter().count(), 2);
    ///
    /// attrs.set("X-Bad", "line\nbreak");
    /// let err = attrs.to_header_map().unwrap_err();
    /// assert!(err.to_string().contains("X-Bad"));
    /// # Ok::<(), msgio::Error>(())
    /// ```
    pub fn to_header_map(&self) -> Result<HeaderMap, Error> {
        let mut map = HeaderMap::with_capacity(self.entries().len());
        for (key, value) in self.iter() {
            let name = header_name(key)?;
            check_header_value(key, value)?;
            let value = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|e| Error::invalid_attribute(key, format!("invalid header value: {e}")))?;
            map.append(name, value);
        }
        Ok(map)
    }

    /// Builds attributes from an `http::HeaderMap`, canonicalizing the names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAttribute`] naming the header whose value is not valid UTF-8.
    pub fn from_header_map(headers: &HeaderMap) -> Result<Self, Error> {
        let mut attrs = Attributes::new();
        for (name, value) in headers {
            let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
                Error::invalid_attribute(name.as_str(), "header value is not valid UTF-8")
            })?;
            attrs.add(name.as_str(), value);
        }
        Ok(attrs)
    }
}

fn header_name(key: &str) -> Result<HeaderName, Error> {
    if key.is_empty() {
        return Err(Error::invalid_attribute(
            key,
            "an empty key cannot be a header name",
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|&c| !c.is_ascii() || !is_token_byte(c as u8))
    {
        return Err(Error::invalid_attribute(
            key,
            format!("{} cannot appear in a header name", describe_char(c)),
        ));
    }
    HeaderName::from_bytes(key.as_bytes())
        .map_err(|e| Error::invalid_attribute(key, format!("invalid header name: {e}")))
}

fn check_header_value(key: &str, value: &str) -> Result<(), Error> {
    match value.chars().find(|&c| c.is_ascii_control() && c != '\t') {
        None => Ok(()),
        Some(c) => Err(Error::invalid_attribute(
            key,
            format!(
                "its value holds {}, which a header cannot carry",
                describe_char(c)
            ),
        )),
    }
}

fn describe_char(c: char) -> String {
    match c {
        '\r' => "a carriage return (CR)".into(),
        '\n' => "a line feed (LF)".into(),
        '\0' => "a NUL byte".into(),
        ' ' => "a space".into(),
        c if c.is_control() => format!("the control character {c:?}"),
        c => format!("the character {c:?}"),
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for key in self.keys() {
            map.entry(&key, &self.get_all(key).collect::<Vec<_>>());
        }
        map.finish()
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Attributes {}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut attrs = Attributes::new();
        attrs.extend(iter);
        attrs
    }
}

/// Adds every pair, as [`Attributes::add`] does.
impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Attributes {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.add(k, v);
        }
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl TryFrom<&Attributes> for HeaderMap {
    type Error = Error;
    fn try_from(attrs: &Attributes) -> Result<HeaderMap, Error> {
        attrs.to_header_map()
    }
}

impl TryFrom<&HeaderMap> for Attributes {
    type Error = Error;
    fn try_from(headers: &HeaderMap) -> Result<Attributes, Error> {
        Attributes::from_header_map(headers)
    }
}

/// Iterator over the `(key, value)` pairs of [`Attributes`].
#[derive(Clone)]
pub struct Iter<'a> {
    text: &'a str,
    inner: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let e = self.inner.next()?;
        Some((slice(self.text, e.key), slice(self.text, e.value)))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// Iterator over the values of one key, from [`Attributes::get_all`].
#[derive(Clone)]
pub struct GetAll<'a> {
    text: &'a str,
    inner: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for GetAll<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        Some(slice(self.text, self.inner.next()?.value))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for GetAll<'_> {}

impl fmt::Debug for GetAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// Iterator over the distinct keys of [`Attributes`], from [`Attributes::keys`].
#[derive(Clone)]
pub struct Keys<'a> {
    text: &'a str,
    inner: &'a [Entry],
}

impl<'a> Keys<'a> {
    /// The next key and the entries of its values (a group's entries share its key).
    fn next_group(&mut self) -> Option<(&'a str, &'a [Entry])> {
        let first = self.inner.first()?;
        let len = self.inner.iter().take_while(|e| e.key == first.key).count();
        let (group, rest) = self.inner.split_at(len);
        self.inner = rest;
        Some((slice(self.text, first.key), group))
    }
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        self.next_group().map(|(key, _)| key)
    }
}

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

#[cfg(test)]
mod tests {
    /// The word-wise compare agrees with slice equality at every length it special-cases
    /// and past them, whichever byte differs (first, last, middle) or none.
    #[test]
    fn same_bytes_is_slice_equality() {
        for n in 0..=24 {
            let a: Vec<u8> = (0..n).map(|i| b'a' + i as u8).collect();
            assert!(super::same_bytes(&a, &a.clone()), "equal at {n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!super::same_bytes(&a, &b), "length {n}, byte {at} differs");
            }
            let longer = [a.as_slice(), b"x"].concat();
            assert!(!super::same_bytes(&a, &longer), "lengths {n} and {}", n + 1);
        }
    }

    /// Random sequences of set, add and remove over a few keys, so that tables cross the
    /// inline size both ways, checked against the fuzz target's model.
    #[test]
    fn random_edits_across_the_inline_size_match_the_model() {
        let keys: [&[u8]; 7] = [b"a", b"B", b"c-d", b"x-multi", b"e", b"F", b"g"];
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..5000 {
            let mut data = Vec::new();
            for _ in 0..(1 + next() % 24) {
                data.push((next() % 3) as u8);
                data.push(0);
                data.extend_from_slice(keys[(next() % 7) as usize]);
                data.push(0);
                data.extend((0..next() % 6).map(|_| b'a' + (next() % 26) as u8));
                data.push(0);
            }
            crate::fuzz::attributes(&data);
        }
        // A clone shares the table until one side changes it.
        let mut a = Attributes::new();
        for k in ["A", "B", "C", "D"] {
            a.add(k, "1");
        }
        let b = a.clone();
        a.add("E", "2");
        a.add("B", "3");
        assert_eq!(b.len(), 4);
        assert_eq!(a.get_all("b").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(a.keys().collect::<Vec<_>>(), ["A", "B", "C", "D", "E"]);
    }

    use super::*;

    /// Go's `net/textproto` `canonicalHeaderKeyTests`, every case.
    #[test]
    fn canonical_keys_match_go_textproto() {
        let cases = [
            ("a-b-c", "A-B-C"),
            ("a-1-c", "A-1-C"),
            ("User-Agent", "User-Agent"),
            ("uSER-aGENT", "User-Agent"),
            ("user-agent", "User-Agent"),
            ("USER-AGENT", "User-Agent"),
            // Other valid tchar bytes in tokens.
            ("foo-bar_baz", "Foo-Bar_baz"),
            ("foo-bar$baz", "Foo-Bar$baz"),
            ("foo-bar~baz", "Foo-Bar~baz"),
            ("foo-bar*baz", "Foo-Bar*baz"),
            // Non-ASCII or anything with spaces or non-token chars is unchanged.
            ("üser-agenT", "üser-agenT"),
            ("a B", "a B"),
            ("C Ontent-Transfer-Encoding", "C Ontent-Transfer-Encoding"),
            ("foo bar", "foo bar"),
        ];
        for (input, want) in cases {
            assert_eq!(canonical_key(input), want, "canonical_key({input:?})");
        }
    }

    #[test]
    fn canonical_key_edge_cases() {
        assert_eq!(canonical_key(""), "");
        assert_eq!(canonical_key("-"), "-");
        assert_eq!(canonical_key("--x"), "--X");
        assert_eq!(canonical_key("x-"), "X-");
        // A non-token byte after a change still keeps the key as it is.
        assert_eq!(canonical_key("ab:c"), "ab:c");
        assert_eq!(canonical_key("aB\tc"), "aB\tc");
        assert_eq!(canonical_key("x-y\u{e9}"), "x-y\u{e9}");
    }

    /// Every key of up to four pieces of a small alphabet (letters of both cases, `-`, a
    /// digit, other token bytes, a space, a colon, a tab, a multi-byte letter), and 20,000
    /// longer ones, are canonicalized as Go's rule, written out plainly, says; borrowed
    /// exactly when they come out unchanged.
    #[test]
    fn canonical_key_is_gos_rule_for_every_short_key() {
        fn rule(key: &str) -> String {
            if !key.bytes().all(super::is_token_byte) {
                return key.to_owned();
            }
            let mut upper = true;
            key.bytes()
                .map(|c| {
                    let c = if upper {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    };
                    upper = c == b'-';
                    char::from(c)
                })
                .collect()
        }
        let alphabet = ["a", "Z", "-", "7", "_", "~", " ", ":", "\t", "\u{e9}"];
        let (mut keys, mut level) = (vec![String::new()], vec![String::new()]);
        for _ in 0..4 {
            level = level
                .iter()
                .flat_map(|k| alphabet.iter().map(move |a| format!("{k}{a}")))
                .collect();
            keys.extend(level.iter().cloned());
        }
        assert_eq!(keys.len(), 1 + 10 + 100 + 1000 + 10_000);
        // And longer ones, across the eight-byte steps of the fast path: mostly letters,
        // digits and `-` (that path's keys), now and then another byte.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = (seed >> 59) as usize + 5;
            let key: String = (0..len)
                .map(|i| {
                    let pick = (seed >> (i % 48)) as usize % 64;
                    match pick {
                        0..=19 => "a",
                        20..=39 => "Z",
                        40..=51 => "-",
                        52..=61 => "7",
                        _ => alphabet[(pick + i) % alphabet.len()],
                    }
                })
                .collect();
            keys.push(key);
        }
        for key in &keys {
            let got = canonical_key(key);
            assert_eq!(got, rule(key), "canonical_key({key:?})");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                got == key.as_str(),
                "{key:?}"
            );
        }
    }

    #[test]
    fn canonical_keys_are_borrowed_not_copied() {
        for key in [
            "Content-Type",
            "X-Msgio-Attempt",
            "A-1-C",
            "a B",
            "üser",
            "",
        ] {
            assert!(
                matches!(canonical_key(key), Cow::Borrowed(_)),
                "{key:?} was copied"
            );
        }
        assert!(matches!(canonical_key("content-type"), Cow::Owned(_)));
    }

    /// Keys and values are kept in the table itself up to a point, then in a string of its
    /// own: every value reads back the same on both sides of that point, multi-byte
    /// characters included, and a clone keeps what it had.
    #[test]
    fn values_read_back_whole_as_the_text_outgrows_the_table() {
        let mut a = Attributes::new();
        let mut expected = Vec::new();
        for i in 0..12 {
            let value = format!("välue-{i}-{}", "ü".repeat(i));
            a.add(format!("k{i}"), &value);
            expected.push((format!("K{i}"), value));
            let clone = a.clone();
            for (key, value) in &expected {
                assert_eq!(a.get(key), Some(value.as_str()), "after {i} entries");
                assert_eq!(clone.get(key), Some(value.as_str()));
            }
        }
        let before = a.clone();
        a.set("K0", "x");
        assert_eq!(before.get("K0"), Some(expected[0].1.as_str()));
        assert_eq!(a.get("K0"), Some("x"));
        // Shrinks back (compaction) and stays right.
        for i in 1..12 {
            a.remove(&format!("k{i}"));
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), [("K0", "x")]);
    }

    /// `sizes` counts what iterating gives: a value each, a key once per value, and
    /// nothing of replaced values.
    #[test]
    fn sizes_are_the_values_and_their_bytes_as_iterated() {
        let mut attrs = Attributes::new();
        assert_eq!(attrs.sizes(), (0, 0));
        attrs.add("x-tag", "a");
        attrs.add("X-Tag", "bb");
        attrs.set("Content-Type", "text/plain");
        attrs.set("X-Long", "é".repeat(100));
        attrs.set("X-Long", "short");
        attrs.remove("content-type");
        attrs.set("Ünïcode-Wert", "ü");
        let (values, bytes) = attrs
            .iter()
            .fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
        assert_eq!(attrs.sizes(), (values, bytes));
        assert_eq!(values, 4);
    }

    /// `groups` walks what `keys` then `get_all` give, in one pass.
    #[test]
    fn groups_are_the_keys_with_their_values() {
        let mut a = Attributes::new();
        a.add("b", "1");
        a.add("a", "2");
        a.add("B", "3");
        a.set("c", "4");
        let groups: Vec<(&str, Vec<&str>)> = a.groups().map(|(k, v)| (k, v.collect())).collect();
        let expected: Vec<(&str, Vec<&str>)> =
            a.keys().map(|k| (k, a.get_all(k).collect())).collect();
        assert_eq!(groups, expected);
        assert_eq!(
            groups,
            [("B", vec!["1", "3"]), ("A", vec!["2"]), ("C", vec!["4"])]
        );
        assert_eq!(Attributes::new().groups().count(), 0);
    }

    #[test]
    fn set_replaces_every_value_and_add_appends() {
        let mut a = Attributes::new();
        a.add("x-foo", "a");
        a.add("X-Bar", "z");
        a.add("X-FOO", "b");
        assert_eq!(a.get_all("x-foo").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [("X-Foo", "a"), ("X-Foo", "b"), ("X-Bar", "z")]
        );
        a.set("x-Foo", "c");
        assert_eq!(a.get_all("X-Foo").collect::<Vec<_>>(), ["c"]);
        assert_eq!(a.len(), 2);
        assert_eq!(a.remove("x-bar"), Some("z".to_owned()));
        assert_eq!(a.remove("x-bar"), None);
        assert!(!a.contains("X-Bar"));
        assert_eq!(a.len(), 1);
        a.clear();
        assert!(a.is_empty());
        assert_eq!(a.get("x-foo"), None);
        assert_eq!(a.get_all("x-foo").count(), 0);
    }

    #[test]
    fn keys_with_spaces_are_exact() {
        let mut a = Attributes::new();
        a.set("a B", "1");
        assert_eq!(a.get("a B"), Some("1"));
        assert_eq!(a.get("A-b"), None);
        assert_eq!(a.keys().collect::<Vec<_>>(), ["a B"]);
    }

    #[test]
    fn clones_share_until_written() {
        let mut a: Attributes = [("k", "1")].into_iter().collect();
        let b = a.clone();
        a.set("k", "2");
        assert_eq!(b.get("k"), Some("1"));
        assert_eq!(a.get("k"), Some("2"));
        assert_ne!(a, b);
    }

    #[test]
    fn header_map_round_trip_keeps_multi_values_and_unicode() {
        let mut a = Attributes::new();
        a.add("x-tag", "a");
        a.add("x-tag", "b");
        a.set("Content-Type", "text/plain; charset=utf-8");
        a.set("X-Name", "Grüße, 世界");
        a.set("X-Tab", "a\tb");
        let map = a.to_header_map().unwrap();
        assert_eq!(map.get_all("x-tag").iter().count(), 2);
        let back = Attributes::from_header_map(&map).unwrap();
        assert_eq!(back.get_all("X-Tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(back.get("x-name"), Some("Grüße, 世界"));
        assert_eq!(back.get("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(back.len(), a.len());
    }

    #[test]
    fn header_map_conversion_names_what_a_header_cannot_carry() {
        let cases = [
            ("X-Cr", "a\rb", "carriage return"),
            ("X-Lf", "a\nb", "line feed"),
            ("X-Nul", "a\0b", "NUL"),
            ("X-Bell", "\u{7}", "control character"),
        ];
        for (key, value, what) in cases {
            let mut a = Attributes::new();
            a.set(key, value);
            let msg = a.to_header_map().unwrap_err().to_string();
            assert!(msg.contains(key) && msg.contains(what), "{msg}");
        }
        for (key, what) in [
            ("a B", "space"),
            ("", "empty"),
            ("k:v", "':'"),
            ("ü", "'ü'"),
        ] {
            let mut a = Attributes::new();
            a.set(key, "v");
            let msg = a.to_header_map().unwrap_err().to_string();
            assert!(
                msg.contains(&format!("{key:?}")) && msg.contains(what),
                "{msg}"
            );
        }
    }

    #[test]
    fn non_utf8_header_values_are_refused_by_name() {
        let mut map = HeaderMap::new();
        map.insert("x-bin", HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap());
        let msg = Attributes::from_header_map(&map).unwrap_err().to_string();
        assert!(msg.contains("x-bin") && msg.contains("UTF-8"), "{msg}");
    }

    /// Random operations against a simple model (an ordered list of keys, each with its
    /// values), many seeds: the multimap behaves as the model says.
    #[test]
    fn behaves_like_a_model_multimap() {
        let keys = ["x-a", "X-A", "x-b", "X-B-c", "a B", "ü", ""];
        // One long value, so that replaced and removed bytes pile up and the text is
        // rewritten now and then.
        let long = "0123456789".repeat(5);
        let values = ["1", "2", "", "ünï", "a b", long.as_str()];
        for seed in 1..200u64 {
            let mut rng = seed;
            let mut next = |n: usize| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % n as u64) as usize
            };
            let mut attrs = Attributes::new();
            let mut model: Vec<(String, Vec<String>)> = Vec::new();
            for _ in 0..40 {
                let key = keys[next(keys.len())];
                let canon = canonical_key(key).into_owned();
                let value = values[next(values.len())];
                let pos = model.iter().position(|(k, _)| *k == canon);
                match next(4) {
                    0 => {
                        attrs.set(key, value);
                        match pos {
                            Some(i) => model[i].1 = vec![value.to_owned()],
                            None => model.push((canon.clone(), vec![value.to_owned()])),
                        }
                    }
                    1 => {
                        attrs.add(key, value);
                        match pos {
                            Some(i) => model[i].1.push(value.to_owned()),
                            None => model.push((canon.clone(), vec![value.to_owned()])),
                        }
                    }
                    2 => {
                        let removed = attrs.remove(key);
                        let expected = pos.map(|i| model.remove(i).1[0].clone());
                        assert_eq!(removed, expected, "seed {seed}");
                    }
                    _ => {}
                }
                assert_eq!(attrs.len(), model.len(), "seed {seed}");
                for (k, vs) in &model {
                    assert_eq!(attrs.get(k), Some(vs[0].as_str()), "seed {seed}");
                    assert_eq!(attrs.get_all(k).collect::<Vec<_>>(), *vs, "seed {seed}");
                }
                let order: Vec<_> = attrs.keys().collect();
                let expected: Vec<_> = model.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(order, expected, "seed {seed}");
            }
        }
    }

    #[test]
    fn replaced_values_do_not_pile_up() {
        let mut a = Attributes::new();
        a.add("X-Tag", "a");
        a.add("X-Tag", "b");
        for i in 0..10_000 {
            a.set("X-Seq", format!("{i:0100}"));
        }
        a.add("X-Tag", "c");
        assert_eq!(a.get("x-seq"), Some(format!("{:0100}", 9_999).as_str()));
        assert_eq!(a.get_all("x-tag").collect::<Vec<_>>(), ["a", "b", "c"]);
        let text = a.table.as_ref().map_or(0, |t| t.text.len());
        assert!(text < 1_000, "{text} bytes kept for about 120");
    }

    #[test]
    fn debug_lists_keys_with_their_values() {
        let a: Attributes = [("b", "1"), ("a", "2"), ("b", "3")].into_iter().collect();
        assert_eq!(format!("{a:?}"), r#"{"B": ["1", "3"], "A": ["2"]}"#);
    }
}
