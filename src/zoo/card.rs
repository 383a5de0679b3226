//! Figures recorded in a shipped model's card (`models/<name>.md`): the two-cell table rows
//! `| key | value |`, such as `| clean_test_correct | 9931 / 10000 |`.

use std::collections::HashMap;

use super::models_dir;
use crate::error::{Error, Result};

/// The `| key | value |` rows of the card of shipped model `name`.
///
/// ```
/// let card = perturb::zoo::card("mnist-cnn")?;
/// assert!(card["clean_test_correct"].ends_with("/ 10000"));
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::UnknownModel`] for a name that is not shipped, [`Error::Io`] when the card cannot
/// be read.
pub fn card(name: &str) -> Result<HashMap<String, String>> {
    let shipped = super::shipped(name)?;
    let path = models_dir().join(format!("{}.md", shipped.name));
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { file: path, source })?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            (cells.len() == 2 && !cells[0].is_empty())
                .then(|| (cells[0].to_string(), cells[1].to_string()))
        })
        .collect())
}

/// The count in a card figure such as `"9931 / 10000"`: `(9931, 10000)`.
///
/// ```
/// assert_eq!(perturb::zoo::parse_count("9931 / 10000"), Some((9931, 10000)));
/// assert_eq!(perturb::zoo::parse_count("n/a"), None);
/// ```
pub fn parse_count(value: &str) -> Option<(usize, usize)> {
    let (a, b) = value.split_once('/')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}
