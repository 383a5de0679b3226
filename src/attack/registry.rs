//! Every attack by name: one [`Entry`] per attack (a constructor from a serde parameter set and
//! the attack's kind), read by the CLI's `--attack`/`--param`/`--attack-spec`, by reports, and
//! by the shared invariant tests. Adding an attack is one file and one line in
//! [`Registry::builtin`]; attacks outside the crate join a registry with
//! [`Registry::register`].

use std::path::Path;

use serde_json::{Map, Value};

use super::pgd::PgdParams;
use super::{
    Apgd, ApgdParams, AtEps, CarliniWagner, CwParams, Ddn, DdnParams, DeepFool, DeepFoolParams,
    Fab, FabParams, Fgsm, FixedBudget, MiFgsm, MiFgsmParams, Pgd, Square, SquareParams,
};
use crate::budget::{Budget, Norm};
use crate::error::{Error, Result};

/// What an attack promises, as the registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A [`FixedBudget`] attack.
    FixedBudget,
    /// A [`MinimumNorm`](super::MinimumNorm) attack, run at a fixed ε through
    /// [`AtEps`](super::AtEps).
    MinimumNorm,
}

/// One registered attack.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The name a spec gives (`pgd`).
    pub name: &'static str,
    /// What the attack promises.
    pub kind: Kind,
    /// One line for help texts.
    pub summary: &'static str,
    /// The norms its budget may have ([`ALL_NORMS`] for most attacks).
    pub norms: &'static [Norm],
    /// Every parameter with its default, as a JSON object: a spec may set exactly these keys.
    pub defaults: fn() -> Value,
    /// The attack within `budget` with the given parameters (the defaults with the spec's
    /// values merged in), checked.
    pub build: fn(Budget, Value) -> Result<Box<dyn FixedBudget>>,
}

/// Every norm: the [`Entry::norms`] of an attack that takes any budget.
pub const ALL_NORMS: &[Norm] = &[Norm::Linf, Norm::L2, Norm::L1];

impl Entry {
    /// Whether the attack takes the parameter `key`.
    pub fn takes(&self, key: &str) -> bool {
        (self.defaults)().get(key).is_some()
    }
}

/// An attack as data: name, budget and parameters, as a spec file or the CLI gives it and as
/// reports record it (`{"attack": "pgd", "norm": "linf", "eps": 0.3, "steps": 40}`).
///
/// ```
/// use perturb::attack::{AttackSpec, Registry};
/// let spec = AttackSpec::from_json(r#"{"attack": "pgd", "eps": 0.3, "steps": 40, "seed": 7}"#)?;
/// let pgd = Registry::builtin().build(&spec)?;
/// assert_eq!((pgd.name(), pgd.budget().eps()), ("pgd", 0.3));
/// assert_eq!(pgd.params()["steps"], 40);
/// let typo = AttackSpec::from_json(r#"{"attack": "pgd", "eps": 0.3, "stpes": 40}"#)?;
/// assert!(Registry::builtin().build(&typo).is_err());
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttackSpec {
    /// The registered name.
    pub attack: String,
    /// Norm of the budget (default L∞).
    #[serde(default = "default_norm")]
    pub norm: Norm,
    /// Radius of the budget; a sweep sets it per point, so a spec file may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    /// The attack's own parameters; those left out keep their defaults.
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

fn default_norm() -> Norm {
    Norm::Linf
}

impl AttackSpec {
    /// The attack `name` within `budget`, default parameters.
    pub fn new(name: impl Into<String>, budget: Budget) -> Self {
        Self {
            attack: name.into(),
            norm: budget.norm(),
            eps: Some(budget.eps()),
            params: Map::new(),
        }
    }

    /// Set one parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }

    /// Parse a spec from JSON text.
    ///
    /// # Errors
    /// [`Error::AttackSpec`] for text that is not a spec.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::AttackSpec {
            attack: "(json)".into(),
            reason: e.to_string(),
        })
    }

    /// Read a spec file (JSON).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::AttackSpec`] when it is not a spec.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            file: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::AttackSpec {
            attack: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// Name → constructor for every attack: [`Registry::builtin`] holds this crate's.
///
/// ```
/// use perturb::attack::{Kind, Registry};
/// let registry = Registry::builtin();
/// let names: Vec<&str> = registry.entries().iter().map(|e| e.name).collect();
/// assert_eq!(names, ["fgsm", "bim", "pgd", "apgd", "apgd-t", "fab-t", "square", "mi-fgsm",
///                    "cw", "deepfool", "ddn"]);
/// assert_eq!(registry.get("pgd")?.kind, Kind::FixedBudget);
/// assert!(registry.get("pgd")?.takes("restarts"));
/// # Ok::<(), perturb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// This crate's attacks, one line each.
    pub fn builtin() -> Self {
        Self {
            entries: vec![
                Entry {
                    name: "fgsm",
                    kind: Kind::FixedBudget,
                    summary: "one step of size eps along the gradient's steepest-ascent direction (Goodfellow et al. 2015)",
                    norms: ALL_NORMS,
                    defaults: fgsm_defaults,
                    build: build_fgsm,
                },
                Entry {
                    name: "bim",
                    kind: Kind::FixedBudget,
                    summary: "iterated projected steps from the clean input (Kurakin et al. 2017)",
                    norms: ALL_NORMS,
                    defaults: || pgd_defaults(false),
                    build: |b, p| build_pgd("bim", b, p),
                },
                Entry {
                    name: "pgd",
                    kind: Kind::FixedBudget,
                    summary: "projected gradient descent from a random start, with restarts (Madry et al. 2018)",
                    norms: ALL_NORMS,
                    defaults: || pgd_defaults(true),
                    build: |b, p| build_pgd("pgd", b, p),
                },
                Entry {
                    name: "apgd",
                    kind: Kind::FixedBudget,
                    summary: "Auto-PGD: step size adapted per sample, momentum, no step size to tune (Croce & Hein 2020)",
                    norms: ALL_NORMS,
                    defaults: || apgd_defaults(ApgdParams::default()),
                    build: |b, p| build_apgd("apgd", b, p),
                },
                Entry {
                    name: "apgd-t",
                    kind: Kind::FixedBudget,
                    summary: "targeted Auto-PGD on the DLR loss toward the top-ranked other classes (Croce & Hein 2020)",
                    norms: ALL_NORMS,
                    defaults: || apgd_defaults(ApgdParams::targeted()),
                    build: |b, p| build_apgd("apgd-t", b, p),
                },
                Entry {
                    name: "fab-t",
                    kind: Kind::MinimumNorm,
                    summary: "targeted fast adaptive boundary attack, the closest point it finds judged at eps (Croce & Hein 2020)",
                    norms: &[Norm::Linf, Norm::L2],
                    defaults: || serde_json::to_value(FabParams::default()).unwrap_or_default(),
                    build: build_fab,
                },
                Entry {
                    name: "square",
                    kind: Kind::FixedBudget,
                    summary: "score-based random search over squares, forward passes only (Andriushchenko et al. 2020)",
                    norms: &[Norm::Linf, Norm::L2],
                    defaults: || serde_json::to_value(SquareParams::default()).unwrap_or_default(),
                    build: build_square,
                },
                Entry {
                    name: "mi-fgsm",
                    kind: Kind::FixedBudget,
                    summary: "iterated steps with momentum, optional input diversity and translation invariance, for transfer (Dong et al. 2018)",
                    norms: ALL_NORMS,
                    defaults: || serde_json::to_value(MiFgsmParams::default()).unwrap_or_default(),
                    build: |b, p| Ok(Box::new(MiFgsm::with_params(b, typed("mi-fgsm", p)?).build()?)),
                },
                Entry {
                    name: "cw",
                    kind: Kind::MinimumNorm,
                    summary: "Carlini-Wagner L2: Adam on the margin loss with a search over c, the smallest point found judged at eps (Carlini & Wagner 2017)",
                    norms: &[Norm::L2],
                    defaults: || serde_json::to_value(CwParams::default()).unwrap_or_default(),
                    build: |b, p| {
                        let cw = CarliniWagner::with_params(typed("cw", p)?).build()?;
                        Ok(Box::new(AtEps::new(cw, b)))
                    },
                },
                Entry {
                    name: "deepfool",
                    kind: Kind::MinimumNorm,
                    summary: "steps to the nearest boundary of the linearised model until the label flips, judged at eps (Moosavi-Dezfooli et al. 2016)",
                    norms: &[Norm::Linf, Norm::L2],
                    defaults: || serde_json::to_value(DeepFoolParams::default()).unwrap_or_default(),
                    build: |b, p| {
                        let df = DeepFool::with_params(b.norm(), typed("deepfool", p)?).build()?;
                        Ok(Box::new(AtEps::new(df, b)))
                    },
                },
                Entry {
                    name: "ddn",
                    kind: Kind::MinimumNorm,
                    summary: "decoupled direction and norm: a fast minimum-L2 attack, judged at eps (Rony et al. 2019)",
                    norms: &[Norm::L2],
                    defaults: || serde_json::to_value(DdnParams::default()).unwrap_or_default(),
                    build: |b, p| {
                        let ddn = Ddn::with_params(typed("ddn", p)?).build()?;
                        Ok(Box::new(AtEps::new(ddn, b)))
                    },
                },
            ],
        }
    }

    /// Add an attack; its name must be new.
    ///
    /// # Errors
    /// [`Error::AttackSpec`] when the name is taken.
    pub fn register(&mut self, entry: Entry) -> Result<()> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(Error::AttackSpec {
                attack: entry.name.into(),
                reason: "an attack of this name is already registered".into(),
            });
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Every attack, in registration order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The attack `name`.
    ///
    /// # Errors
    /// [`Error::UnknownAttack`] naming the known ones.
    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::UnknownAttack {
                name: name.into(),
                known: self.names().join(", "),
            })
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// The attack a spec describes, its parameters checked.
    ///
    /// # Errors
    /// [`Error::UnknownAttack`]; [`Error::AttackSpec`] for a missing ε, a parameter the attack
    /// does not take or a value of the wrong type; [`Error::InvalidEpsilon`] and
    /// [`Error::InvalidParameter`] for values out of range.
    pub fn build(&self, spec: &AttackSpec) -> Result<Box<dyn FixedBudget>> {
        let entry = self.get(&spec.attack)?;
        let eps = spec.eps.ok_or_else(|| Error::AttackSpec {
            attack: spec.attack.clone(),
            reason: "no eps given".into(),
        })?;
        let budget = Budget::new(spec.norm, eps)?;
        if !entry.norms.contains(&spec.norm) {
            let names: Vec<String> = entry.norms.iter().map(Norm::to_string).collect();
            return Err(Error::AttackSpec {
                attack: spec.attack.clone(),
                reason: format!("no {} budget: it supports {}", spec.norm, names.join(", ")),
            });
        }
        let mut params = (entry.defaults)();
        let Some(known) = params.as_object_mut() else {
            return Err(Error::AttackSpec {
                attack: spec.attack.clone(),
                reason: "the registry entry's defaults are not a JSON object".into(),
            });
        };
        for (key, value) in &spec.params {
            if !known.contains_key(key) {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                return Err(Error::AttackSpec {
                    attack: spec.attack.clone(),
                    reason: format!(
                        "unknown parameter {key:?}; its parameters: {}",
                        names.join(", ")
                    ),
                });
            }
            known.insert(key.clone(), value.clone());
        }
        match (entry.build)(budget, params) {
            Err(Error::AttackSpec { attack, reason }) => {
                // serde's message names the type, not the key: find the key that fails alone
                let culprit = spec.params.iter().find(|(key, value)| {
                    let mut one = (entry.defaults)();
                    one[key.as_str()] = (*value).clone();
                    matches!((entry.build)(budget, one), Err(Error::AttackSpec { .. }))
                });
                let reason = match culprit {
                    Some((key, value)) => format!("parameter {key} = {value}: {reason}"),
                    None => reason,
                };
                Err(Error::AttackSpec { attack, reason })
            }
            other => other,
        }
    }
}

/// Typed parameters from the merged JSON an [`Entry::build`] receives, with serde's message
/// (naming the parameter) on a wrong type: what an entry's `build` calls first.
///
/// # Errors
/// [`Error::AttackSpec`].
pub fn typed<T: serde::de::DeserializeOwned>(attack: &str, params: Value) -> Result<T> {
    serde_json::from_value(params).map_err(|e| Error::AttackSpec {
        attack: attack.into(),
        reason: e.to_string(),
    })
}

fn pgd_defaults(random_start: bool) -> Value {
    let params = PgdParams {
        random_start,
        ..PgdParams::default()
    };
    serde_json::to_value(params).unwrap_or_default()
}

fn apgd_defaults(params: ApgdParams) -> Value {
    serde_json::to_value(params).unwrap_or_default()
}

fn build_apgd(name: &'static str, budget: Budget, params: Value) -> Result<Box<dyn FixedBudget>> {
    let params: ApgdParams = typed(name, params)?;
    if name == "apgd-t" && params.targets == 0 {
        return Err(Error::InvalidParameter {
            name: "targets",
            value: "0".into(),
            reason: "apgd-t needs at least one target class (apgd is the untargeted attack)",
        });
    }
    if name == "apgd" && params.targets > 0 {
        return Err(Error::InvalidParameter {
            name: "targets",
            value: params.targets.to_string(),
            reason: "apgd is untargeted: use apgd-t for target classes",
        });
    }
    Ok(Box::new(Apgd::with_params(budget, params).build()?))
}

fn build_fab(budget: Budget, params: Value) -> Result<Box<dyn FixedBudget>> {
    let params: FabParams = typed("fab-t", params)?;
    let fab = Fab::with_params(budget.norm(), params).build()?;
    Ok(Box::new(AtEps::new(fab, budget)))
}

fn build_square(budget: Budget, params: Value) -> Result<Box<dyn FixedBudget>> {
    let params: SquareParams = typed("square", params)?;
    Ok(Box::new(Square::with_params(budget, params).build()?))
}

fn build_pgd(name: &'static str, budget: Budget, params: Value) -> Result<Box<dyn FixedBudget>> {
    let params: PgdParams = typed(name, params)?;
    Ok(Box::new(Pgd::with_params(name, budget, params).build()?))
}

/// FGSM's own parameters: the rest of PGD's are fixed by the preset.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FgsmParams {
    loss: crate::loss::Loss,
    check_gradient: bool,
    l1_sparsity: f32,
}

fn fgsm_defaults() -> Value {
    let p = Fgsm::params();
    serde_json::to_value(FgsmParams {
        loss: p.loss,
        check_gradient: p.check_gradient,
        l1_sparsity: p.l1_sparsity,
    })
    .unwrap_or_default()
}

fn build_fgsm(budget: Budget, params: Value) -> Result<Box<dyn FixedBudget>> {
    let p: FgsmParams = typed("fgsm", params)?;
    let fgsm = Fgsm::new(budget)
        .loss(p.loss)
        .check_gradient(p.check_gradient)
        .l1_sparsity(p.l1_sparsity);
    Ok(Box::new(fgsm.build()?))
}
