//! The 1,000 ImageNet-1k (ILSVRC 2012) classes in the usual index order (sorted WordNet ids), with
//! their WordNet lemmas, from `timm`'s `imagenet_synset_to_lemma.txt` (Apache-2.0).

use std::sync::OnceLock;

use crate::error::{Error, Result};

const LEMMAS: &str = include_str!("../../models/imagenet-classes.txt");

/// The class names, index `i` at position `i`: WordNet lemmas, comma-separated synonyms
/// (`"tabby, tabby cat"`, `"toaster"`).
///
/// ```
/// let names = perturb::zoo::imagenet_classes();
/// assert_eq!((names.len(), names[859]), (1000, "toaster"));
/// ```
pub fn imagenet_classes() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| LEMMAS.lines().collect())
}

/// Resolve a class given on a command line against a label set of `num_classes` classes: an
/// index (`"859"`), or for ImageNet a name matched case-insensitively against the whole lemma or
/// any one of its synonyms (`"toaster"`, `"tabby cat"`).
///
/// ```
/// use perturb::zoo::class_index;
/// assert_eq!(class_index("toaster", 1000)?, 859);
/// assert_eq!(class_index("Tiger Cat", 1000)?, 282);
/// assert_eq!(class_index("7", 10)?, 7);
/// assert!(class_index("crane", 1000).is_err()); // the bird (134) or the machine (517)?
/// assert!(class_index("unicorn", 1000).is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::UnknownClass`] for an index out of range, an unknown name, or a name shared by
/// several classes (the message lists them).
pub fn class_index(name: &str, num_classes: usize) -> Result<usize> {
    let err = |reason: String| Error::UnknownClass {
        name: name.to_string(),
        reason,
    };
    if let Ok(i) = name.trim().parse::<usize>() {
        return if i < num_classes {
            Ok(i)
        } else {
            Err(err(format!("index out of range for {num_classes} classes")))
        };
    }
    if num_classes != imagenet_classes().len() {
        return Err(err(format!(
            "this model's {num_classes} classes have no names; give an index"
        )));
    }
    let wanted = name.trim().to_lowercase();
    let hits: Vec<usize> = imagenet_classes()
        .iter()
        .enumerate()
        .filter(|(_, lemma)| {
            lemma.to_lowercase() == wanted
                || lemma
                    .split(',')
                    .any(|syn| syn.trim().to_lowercase() == wanted)
        })
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => Err(err("no ImageNet class has this name".into())),
        many => Err(err(format!(
            "ambiguous, give one of the indices: {}",
            many.iter()
                .map(|&i| format!("{i} ({})", imagenet_classes()[i]))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
