//! Attributes as a row holds them: one `text[]` of keys and values in turn, in order.

use crate::{Attributes, Error};

/// The largest body a `bytea` holds (1 GiB less what the row around it needs).
pub(super) const MAX_BODY: usize = (1 << 30) - 1024;

/// Refuses attributes a row cannot hold.
///
/// # Errors
///
/// [`Error::InvalidAttribute`] for a key or value holding a NUL character, which
/// PostgreSQL's `text` cannot store.
pub(super) fn check(attributes: &Attributes) -> Result<(), Error> {
    for (key, value) in attributes.iter() {
        if key.contains('\0') {
            return Err(Error::invalid_attribute(
                key,
                "PostgreSQL text cannot hold a NUL character in a key",
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid_attribute(
                key,
                "PostgreSQL text cannot hold a NUL character in a value",
            ));
        }
    }
    Ok(())
}

/// `attributes` as a row holds them: key, value, key, value...
pub(super) fn flatten(attributes: &Attributes) -> Vec<Option<String>> {
    attributes
        .iter()
        .flat_map(|(key, value)| [Some(key.to_owned()), Some(value.to_owned())])
        .collect()
}

/// The attributes of a row's `text[]`, or why they cannot be read (an odd number of
/// elements, a NULL element: a row written by something else than msgio).
pub(super) fn unflatten(flat: Vec<Option<String>>) -> Result<Attributes, String> {
    if flat.len() % 2 != 0 {
        return Err(format!(
            "the attributes array has {} elements, not key/value pairs",
            flat.len()
        ));
    }
    let mut attributes = Attributes::new();
    let mut items = flat.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        match (key, value) {
            (Some(key), Some(value)) if !key.is_empty() => attributes.add(key, value),
            (Some(key), None) => return Err(format!("attribute {key:?} has a NULL value")),
            _ => return Err("an attribute key is NULL or empty".to_owned()),
        }
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_in_order_with_repeated_keys() {
        let mut attributes = Attributes::new();
        attributes.add("x-b", "1");
        attributes.add("X-A", "2");
        attributes.add("x-b", "3");
        check(&attributes).unwrap();
        let flat = flatten(&attributes);
        let expected = ["X-B", "1", "X-B", "3", "X-A", "2"];
        assert_eq!(flat, expected.map(|s| Some(s.to_owned())));
        let back = unflatten(flat).unwrap();
        assert_eq!(back.get_all("X-B").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(back.iter().count(), 3);
    }

    #[test]
    fn nul_characters_are_refused_naming_the_key() {
        let mut attributes = Attributes::new();
        attributes.set("X-Bad", "a\0b");
        let e = check(&attributes).unwrap_err();
        assert!(
            matches!(e, Error::InvalidAttribute { ref key, .. } if key == "X-Bad"),
            "{e}"
        );
    }

    #[test]
    fn arrays_not_written_by_msgio_are_reported() {
        assert!(unflatten(vec![Some("A".into())]).is_err());
        assert!(unflatten(vec![Some("A".into()), None]).is_err());
        assert!(unflatten(vec![None, Some("v".into())]).is_err());
        assert!(unflatten(vec![]).unwrap().is_empty());
    }
}
