//! Names in a status message: the first few and how many more. A message grows with how many
//! things are wrong, and a plan of thousands of VMs must not write thousands of names into
//! one condition at every change.

/// How many names a message shows before it counts the rest.
pub const SHOWN: usize = 10;

/// `a, b, c`; past [`SHOWN`] names, the first of them and `and 7 more`.
pub fn some_of<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<&str> = names.iter().take(SHOWN).map(AsRef::as_ref).collect();
    let text = shown.join(", ");
    match names.len().saturating_sub(SHOWN) {
        0 => text,
        more => format!("{text} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_list_is_given_whole_and_a_long_one_is_counted() {
        assert_eq!(some_of(&["a", "b"]), "a, b");
        assert_eq!(some_of::<&str>(&[]), "");
        let many: Vec<String> = (0..1000).map(|i| format!("vm-{i:04}")).collect();
        let text = some_of(&many);
        assert!(text.starts_with("vm-0000, vm-0001, "), "{text}");
        assert!(text.ends_with("vm-0009 and 990 more"), "{text}");
        assert_eq!(
            some_of(&many[..SHOWN]).matches(", ").count(),
            SHOWN - 1,
            "exactly SHOWN names are given whole"
        );
    }
}
