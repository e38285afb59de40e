//! Rules beside the model: named conditions in CEL (the Common Expression
//! Language, <https://cel.dev>) over a scored transaction, each asking for a
//! decision. Compiled once per configuration; evaluating one is a few hundred
//! nanoseconds and never fails the stream: a condition that cannot be
//! evaluated on a row (a `null` compared with a number, a division by zero)
//! does not fire, and is reported as failed for that row.
//!
//! What a condition can read, by name:
//! - the transaction: `tx_id`, `card_id`, `terminal_id`, `amount` (double),
//!   `currency`, `mcc` (int), `channel` (`"pos"`, `"ecom"`, `"atm"`),
//!   `country` (each of the last four `null` when the event has none), and
//!   `hour` (0–23, UTC);
//! - the model's score, `score`, and every model feature by its name
//!   (`card_count_1d`, `terminal_risk_7d`, …), as doubles, plus
//!   `card_sum_<window>` = `card_count_<window>` × `card_avg_amount_<window>`
//!   where the model has both;
//! - the configured lists: `lists.<name>`, a set of strings, so
//!   `card_id in lists.blocked_cards` is one hash lookup.

use super::Decision;
use crate::config::{Problem, RulesConfig};
use crate::event::{Channel, Transaction};
use cel::common::value::{CowVal, Val};
use cel::{Context, Env, Program, Value};
use chrono::Timelike;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The compiled rules of one configuration, in precedence order.
pub struct Rules {
    rules: Vec<Rule>,
    env: Arc<Env>,
    names: Arc<Names>,
    /// `lists`, converted to CEL once.
    lists: Box<dyn Val>,
}

pub struct Rule {
    pub name: Arc<str>,
    pub action: Decision,
    pub reason: String,
    program: Program,
}

/// What a feature name reads from the row's model inputs.
#[derive(Debug, Clone, Copy)]
enum Input {
    Feature(usize),
    /// count × average: the window's sum.
    Product(usize, usize),
}

struct Names {
    inputs: HashMap<String, Input>,
}

/// What a rule sees of one scored transaction.
pub struct Facts<'a> {
    pub tx: &'a Transaction,
    /// The model's inputs, in its input order.
    pub features: &'a [f32],
    pub score: f32,
}

/// The rules a row fired, and those that could not be evaluated on it, by
/// index into [`Rules::rules`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub fired: Vec<usize>,
    pub failed: Vec<(usize, String)>,
}

const TRANSACTION_NAMES: [&str; 10] = [
    "tx_id",
    "card_id",
    "terminal_id",
    "amount",
    "currency",
    "mcc",
    "channel",
    "country",
    "hour",
    "score",
];

/// Functions whose second argument binds a name inside the condition.
const COMPREHENSIONS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];

impl Rules {
    pub fn none() -> Rules {
        Rules::compile(&RulesConfig::default(), &[]).expect("no rules compile")
    }

    /// Compile `config` against the model's feature names; every problem is
    /// named by its key (`rules.rule[2].when`), not only the first.
    pub fn compile(config: &RulesConfig, feature_names: &[String]) -> Result<Rules, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |key: String, message: String| problems.push(Problem { key, message });
        let names = Names::new(feature_names);
        let env = Arc::new(Env::stdlib());
        let mut seen = BTreeSet::new();
        let mut rules = Vec::with_capacity(config.rule.len());
        for (i, r) in config.rule.iter().enumerate() {
            let key = format!("rules.rule[{i}]");
            if r.name.trim().is_empty() {
                bad(format!("{key}.name"), "must not be empty".into());
            } else if !seen.insert(r.name.as_str()) {
                bad(
                    format!("{key}.name"),
                    format!("{:?} is used by an earlier rule", r.name),
                );
            }
            let action = match r.action.as_str() {
                "approve" => Some(Decision::Approve),
                "review" => Some(Decision::Review),
                "decline" => Some(Decision::Decline),
                other => {
                    bad(
                        format!("{key}.action"),
                        format!("{other:?} is not one of approve, review, decline"),
                    );
                    None
                }
            };
            let program = match env.compile(&r.when) {
                Ok(p) => p,
                Err(e) => {
                    bad(format!("{key}.when"), format!("not a CEL expression: {e}"));
                    continue;
                }
            };
            for problem in names.check(&r.when, &program, &config.lists) {
                bad(format!("{key}.when"), problem);
            }
            if let Some(action) = action {
                rules.push(Rule {
                    name: r.name.as_str().into(),
                    action,
                    reason: r.reason.clone(),
                    program,
                });
            }
        }
        for (name, values) in &config.lists {
            if !is_identifier(name) {
                bad(
                    format!("rules.lists.{name}"),
                    "list names are letters, digits and _, not starting with a digit".into(),
                );
            }
            if values.is_empty() {
                bad(
                    format!("rules.lists.{name}"),
                    "is empty (remove it, or rules that read it would never fire)".into(),
                );
            }
        }
        let lists = lists_value(&config.lists);
        let rules = Rules {
            rules,
            env,
            names: Arc::new(names),
            lists,
        };
        // Type errors CEL only finds when it evaluates: try every rule on a
        // plausible transaction (which fires nothing in particular).
        if problems.is_empty() {
            let tx = sample_transaction();
            let features = vec![1.0; feature_names.len()];
            let facts = Facts {
                tx: &tx,
                features: &features,
                score: 0.5,
            };
            for (i, rule) in rules.rules.iter().enumerate() {
                match rules.condition(rule, &facts) {
                    Ok(_) => {}
                    Err(e) => problems.push(Problem {
                        key: format!("rules.rule[{i}].when"),
                        message: format!("does not evaluate on a sample transaction: {e}"),
                    }),
                }
            }
        }
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(problems)
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule against one row.
    pub fn evaluate(&self, facts: &Facts) -> Outcome {
        let mut outcome = Outcome::default();
        for (i, rule) in self.rules.iter().enumerate() {
            match self.condition(rule, facts) {
                Ok(true) => outcome.fired.push(i),
                Ok(false) => {}
                Err(e) => outcome.failed.push((i, e)),
            }
        }
        outcome
    }

    fn condition(&self, rule: &Rule, facts: &Facts) -> Result<bool, String> {
        let row = Row {
            facts,
            names: &self.names,
            lists: self.lists.as_ref(),
        };
        let mut ctx = Context::with_env(self.env.clone());
        ctx.set_variable_resolver(&row);
        match rule.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("gives {}, not true or false", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Names {
    fn new(feature_names: &[String]) -> Names {
        let index: HashMap<&str, usize> = feature_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut inputs: HashMap<String, Input> = index
            .iter()
            .map(|(n, i)| (n.to_string(), Input::Feature(*i)))
            .collect();
        for (name, &count) in &index {
            if let Some(window) = name.strip_prefix("card_count_") {
                if let Some(&avg) = index.get(format!("card_avg_amount_{window}").as_str()) {
                    inputs.insert(format!("card_sum_{window}"), Input::Product(count, avg));
                }
            }
        }
        Names { inputs }
    }

    fn knows(&self, name: &str) -> bool {
        name == "lists" || TRANSACTION_NAMES.contains(&name) || self.inputs.contains_key(name)
    }

    /// Names the condition reads that nothing provides, and lists it reads
    /// that are not configured. (A name a comprehension binds, the `x` of
    /// `l.exists(x, …)`, is its own.)
    fn check(
        &self,
        source: &str,
        program: &Program,
        lists: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let refs = program.references();
        for name in refs.variables() {
            if !self.knows(name) && !binds(source, name) {
                let mut known: Vec<&str> = TRANSACTION_NAMES.to_vec();
                let mut inputs: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
                inputs.sort_unstable();
                known.extend(inputs);
                known.push("lists");
                problems.push(format!(
                    "unknown name `{name}` (known: {})",
                    known.join(", ")
                ));
            }
        }
        for used in list_references(source) {
            if !lists.contains_key(used) {
                problems.push(format!(
                    "reads lists.{used}, which [rules.lists] does not define"
                ));
            }
        }
        problems
    }
}

/// `name` is bound by a comprehension in `source`: `.exists(name,`.
fn binds(source: &str, name: &str) -> bool {
    COMPREHENSIONS.iter().any(|f| {
        source.match_indices(&format!(".{f}(")).any(|(at, m)| {
            let rest = source[at + m.len()..].trim_start();
            rest.strip_prefix(name)
                .is_some_and(|after| after.trim_start().starts_with(','))
        })
    })
}

/// The `x` of every `lists.x` in the source.
fn list_references(source: &str) -> Vec<&str> {
    source
        .match_indices("lists.")
        .filter(|(at, _)| {
            // not the tail of a longer identifier such as `mylists.`
            source[..*at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'))
        })
        .map(|(at, m)| {
            let rest = &source[at + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.is_empty())
        .collect()
}

fn is_identifier(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Each list as a CEL map from member to `true`: `in` on a map is a lookup.
fn lists_value(lists: &std::collections::BTreeMap<String, Vec<String>>) -> Box<dyn Val> {
    let map: HashMap<String, Value> = lists
        .iter()
        .map(|(name, members)| {
            let set: HashMap<String, bool> = members.iter().map(|m| (m.clone(), true)).collect();
            (name.clone(), Value::from(set))
        })
        .collect();
    Box::<dyn Val>::try_from(Value::from(map)).expect("maps of strings are CEL values")
}

fn sample_transaction() -> Transaction {
    Transaction {
        tx_id: "sample".into(),
        ts: chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("a valid time"),
        card_id: "card".into(),
        terminal_id: "terminal".into(),
        amount: 42.0,
        currency: Some("EUR".into()),
        mcc: Some(5411),
        channel: Some(Channel::Pos),
        country: Some("FR".into()),
    }
}

/// One row as CEL variables, resolved on access.
struct Row<'a> {
    facts: &'a Facts<'a>,
    names: &'a Names,
    lists: &'a dyn Val,
}

impl cel::context::VariableResolver for Row<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let tx = self.facts.tx;
        let text = |s: &str| Value::String(Arc::new(s.to_owned()));
        let opt_text = |s: Option<&str>| s.map_or(Value::Null, text);
        let value = match name {
            "lists" => return Some(CowVal::Borrowed(self.lists)),
            "tx_id" => text(&tx.tx_id),
            "card_id" => text(&tx.card_id),
            "terminal_id" => text(&tx.terminal_id),
            "amount" => Value::Float(tx.amount),
            "currency" => opt_text(tx.currency.as_deref()),
            "mcc" => tx.mcc.map_or(Value::Null, |m| Value::Int(m.into())),
            "channel" => opt_text(tx.channel.map(|c| c.as_str())),
            "country" => opt_text(tx.country.as_deref()),
            "hour" => Value::Int(tx.ts.hour().into()),
            "score" => Value::Float(self.facts.score.into()),
            other => {
                let f = self.facts.features;
                match *self.names.inputs.get(other)? {
                    Input::Feature(i) => Value::Float(f[i].into()),
                    Input::Product(a, b) => Value::Float(f64::from(f[a]) * f64::from(f[b])),
                }
            }
        };
        Box::<dyn Val>::try_from(value).ok().map(CowVal::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn rule(name: &str, when: &str, action: &str) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            when: when.into(),
            action: action.into(),
            reason: format!("because {name}"),
        }
    }

    fn features() -> Vec<String> {
        ["card_count_1d", "card_avg_amount_1d", "terminal_risk_7d"]
            .map(String::from)
            .to_vec()
    }

    fn config(rules: Vec<RuleConfig>) -> RulesConfig {
        RulesConfig {
            lists: [("blocked_cards".to_string(), vec!["c-bad".to_string()])].into(),
            rule: rules,
        }
    }

    #[test]
    fn conditions_read_the_transaction_the_features_the_score_and_lists() {
        let rules = Rules::compile(
            &config(vec![
                rule("blocked", "card_id in lists.blocked_cards", "decline"),
                rule("big-ecom", "amount > 1000.0 && channel == 'ecom'", "review"),
                rule(
                    "busy-card",
                    "card_sum_1d > 500.0 && card_count_1d >= 3.0",
                    "review",
                ),
                rule("risky", "score > 0.4 && terminal_risk_7d > 0.1", "review"),
                rule("no-mcc", "mcc == null", "review"),
            ]),
            &features(),
        )
        .unwrap();
        let mut tx = sample_transaction();
        tx.card_id = "c-bad".into();
        tx.amount = 1500.0;
        tx.channel = Some(Channel::Ecom);
        tx.mcc = None;
        let features = [4.0, 200.0, 0.0];
        let out = rules.evaluate(&Facts {
            tx: &tx,
            features: &features,
            score: 0.9,
        });
        assert_eq!(out.fired, vec![0, 1, 2, 4]);
        assert!(out.failed.is_empty());
        tx.card_id = "c-good".into();
        tx.channel = None;
        let out = rules.evaluate(&Facts {
            tx: &tx,
            features: &[1.0, 10.0, 0.5],
            score: 0.5,
        });
        assert_eq!(out.fired, vec![3, 4]);
    }

    #[test]
    fn a_condition_that_fails_on_a_row_does_not_fire_and_is_reported() {
        let rules = Rules::compile(
            &config(vec![rule("mcc", "mcc > 5000", "review")]),
            &features(),
        )
        .unwrap();
        let mut tx = sample_transaction();
        tx.mcc = None;
        let out = rules.evaluate(&Facts {
            tx: &tx,
            features: &[0.0; 3],
            score: 0.1,
        });
        assert!(out.fired.is_empty());
        assert_eq!(out.failed.len(), 1);
        assert!(out.failed[0].1.contains("_>_"), "{:?}", out.failed);
    }

    #[test]
    fn every_problem_in_the_rules_is_named() {
        let mut rules = vec![
            rule("dup", "amount > 1.0", "review"),
            rule("dup", "amount >", "decline"),
            rule("typo", "amout > 1.0 && card_id in lists.allowed", "block"),
            rule("", "score", "review"),
            rule(
                "ok-comprehension",
                "[1.0, 2.0].exists(x, x > amount)",
                "review",
            ),
        ];
        let Err(problems) = Rules::compile(&config(rules.clone()), &features()) else {
            panic!("must not compile")
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |key: &str, words: &str| {
            assert!(
                text.iter().any(|t| t.starts_with(key) && t.contains(words)),
                "no {key} problem with {words:?} in {text:#?}"
            )
        };
        has("rules.rule[1].name", "used by an earlier rule");
        has("rules.rule[1].when", "not a CEL expression");
        has("rules.rule[2].action", "\"block\"");
        has("rules.rule[2].when", "unknown name `amout`");
        has("rules.rule[2].when", "lists.allowed");
        has("rules.rule[3].name", "empty");
        assert!(
            !text.iter().any(|t| t.starts_with("rules.rule[4]")),
            "{text:#?}"
        );
        // Type errors show on the sample transaction.
        rules = vec![rule("not-a-condition", "score + 1.0", "review")];
        let Err(problems) = Rules::compile(&config(rules), &features()) else {
            panic!("must not compile")
        };
        assert!(
            problems[0].message.contains("not true or false"),
            "{problems:?}"
        );
    }
}
