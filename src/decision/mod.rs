//! Decisions: a scored transaction, against the policy in force (thresholds
//! and rules), gives approve / review / decline and the rules that fired.
//!
//! How the two combine, the same in the stream and in `riskstream backtest`:
//! 1. The thresholds give the score's decision (a channel's override first).
//! 2. Rules are checked in the order of the file; every rule whose condition
//!    holds has fired and is recorded with the decision.
//! 3. The first fired rule whose action is `approve` or `decline` decides,
//!    whatever the score (an allow list before a block list lets the allowed
//!    through). Otherwise a fired `review` rule sends an approved
//!    transaction to review (a declined one stays declined).
//!
//! This module owns the policy and its identity (a content hash that
//! `threshold_sets` turns into a version number). It never looks at models
//! or storage: deciding is a pure function, so a backtest replays it.

mod rules;
mod thresholds;

pub use rules::{Facts, Outcome, Rule, Rules};
pub use thresholds::ThresholdSet;

use crate::config::{Problem, RulesConfig, ThresholdConfig};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    Approve,
    Review,
    Decline,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Review => "review",
            Decision::Decline => "decline",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "approve" => Some(Decision::Approve),
            "review" => Some(Decision::Review),
            "decline" => Some(Decision::Decline),
            _ => None,
        }
    }
}

/// Thresholds and rules, with the version Postgres assigned to them.
pub struct Policy {
    pub thresholds: ThresholdSet,
    pub rules: Rules,
    rules_config: RulesConfig,
    /// `threshold_sets.version`; 0 until registered.
    pub version: i32,
}

/// One row's decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub decision: Decision,
    /// Names of the rules that fired, in precedence order.
    pub rules_fired: Vec<Arc<str>>,
    /// Rules that could not be evaluated on this row, with the error.
    pub rules_failed: Vec<(Arc<str>, String)>,
}

impl Policy {
    /// Check and compile `[thresholds]` and `[rules]` against the model's
    /// feature names. Every problem is named.
    pub fn compile(
        thresholds: &ThresholdConfig,
        rules: &RulesConfig,
        feature_names: &[String],
    ) -> Result<Policy, Vec<Problem>> {
        Ok(Policy {
            thresholds: ThresholdSet::new(thresholds.clone()),
            rules: Rules::compile(rules, feature_names)?,
            rules_config: rules.clone(),
            version: 0,
        })
    }

    /// Thresholds alone (no rules).
    pub fn thresholds_only(thresholds: ThresholdConfig) -> Policy {
        Policy {
            thresholds: ThresholdSet::new(thresholds),
            rules: Rules::none(),
            rules_config: RulesConfig::default(),
            version: 0,
        }
    }

    pub fn changed_by(&self) -> &str {
        &self.thresholds.config.changed_by
    }

    pub fn decide(&self, facts: &Facts) -> Decided {
        let by_score = self.thresholds.decide(facts.score, facts.tx.channel);
        if self.rules.is_empty() {
            return Decided {
                decision: by_score,
                rules_fired: Vec::new(),
                rules_failed: Vec::new(),
            };
        }
        let outcome = self.rules.evaluate(facts);
        let rules = self.rules.rules();
        Decided {
            decision: self.combine(by_score, &outcome),
            rules_fired: outcome
                .fired
                .iter()
                .map(|&i| rules[i].name.clone())
                .collect(),
            rules_failed: outcome
                .failed
                .into_iter()
                .map(|(i, e)| (rules[i].name.clone(), e))
                .collect(),
        }
    }

    /// The score's decision and the rules' outcome on a row, combined as the
    /// module documentation says. Rules do not depend on the thresholds, so
    /// a threshold sweep evaluates them once per row and combines many times.
    pub fn combine(&self, by_score: Decision, outcome: &Outcome) -> Decision {
        let rules = self.rules.rules();
        let overriding = outcome
            .fired
            .iter()
            .map(|&i| rules[i].action)
            .find(|a| *a != Decision::Review);
        match overriding {
            Some(action) => action,
            None if !outcome.fired.is_empty() => by_score.max(Decision::Review),
            None => by_score,
        }
    }

    /// The canonical JSON stored in `threshold_sets` (who changed it is not
    /// part of what the policy is). Without rules it is the thresholds alone,
    /// as before rules existed, so their versions stay the same.
    pub fn canonical_json(&self) -> serde_json::Value {
        let mut json = self.thresholds.canonical_json();
        if !self.rules_config.rule.is_empty() || !self.rules_config.lists.is_empty() {
            json["rules"] = serde_json::to_value(&self.rules_config).expect("rules serialize");
        }
        json
    }

    /// Identity of the content: equal policies get the same version.
    pub fn content_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().to_string().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;
    use crate::event::{Channel, Transaction};

    fn thresholds() -> ThresholdConfig {
        ThresholdConfig {
            review: 0.5,
            decline: 0.9,
            changed_by: "ops".into(),
            channel: Default::default(),
        }
    }

    fn rule(name: &str, when: &str, action: &str) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            when: when.into(),
            action: action.into(),
            reason: String::new(),
        }
    }

    fn tx(card: &str, amount: f64) -> Transaction {
        Transaction {
            tx_id: "t".into(),
            ts: chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            card_id: card.into(),
            terminal_id: "term".into(),
            amount,
            currency: None,
            mcc: None,
            channel: Some(Channel::Pos),
            country: None,
        }
    }

    fn policy() -> Policy {
        Policy::compile(
            &thresholds(),
            &RulesConfig {
                lists: [
                    ("allowed".to_string(), vec!["vip".to_string()]),
                    (
                        "blocked".to_string(),
                        vec!["thief".to_string(), "vip".to_string()],
                    ),
                ]
                .into(),
                rule: vec![
                    rule("allow", "card_id in lists.allowed", "approve"),
                    rule("block", "card_id in lists.blocked", "decline"),
                    rule("large", "amount >= 1000.0", "review"),
                ],
            },
            &[],
        )
        .unwrap()
    }

    fn decide(p: &Policy, card: &str, amount: f64, score: f32) -> (Decision, Vec<String>) {
        let tx = tx(card, amount);
        let d = p.decide(&Facts {
            tx: &tx,
            features: &[],
            score,
        });
        (
            d.decision,
            d.rules_fired.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn the_first_approve_or_decline_rule_decides_and_review_rules_only_raise() {
        let p = policy();
        // No rule: the score decides.
        assert_eq!(decide(&p, "c", 10.0, 0.95), (Decision::Decline, vec![]));
        // A block list declines whatever the score.
        assert_eq!(decide(&p, "thief", 10.0, 0.0).0, Decision::Decline);
        // The allow list comes first: both fire, allow decides.
        assert_eq!(
            decide(&p, "vip", 10.0, 0.99),
            (Decision::Approve, vec!["allow".into(), "block".into()])
        );
        // A review rule raises an approval to review, never lowers a decline.
        assert_eq!(
            decide(&p, "c", 5000.0, 0.1),
            (Decision::Review, vec!["large".into()])
        );
        assert_eq!(decide(&p, "c", 5000.0, 0.95).0, Decision::Decline);
    }

    #[test]
    fn version_identity_ignores_who_changed_it_and_covers_the_rules() {
        let base = Policy::thresholds_only(thresholds());
        let mut other = thresholds();
        other.changed_by = "someone else".into();
        assert_eq!(
            base.content_sha256(),
            Policy::thresholds_only(other.clone()).content_sha256()
        );
        // Without rules the stored JSON is the thresholds' alone, as before rules.
        assert_eq!(
            base.canonical_json(),
            serde_json::json!({"review": 0.5f32, "decline": 0.9f32, "channel": {}})
        );
        assert_ne!(base.content_sha256(), policy().content_sha256());
        other.decline = 0.95;
        assert_ne!(
            base.content_sha256(),
            Policy::thresholds_only(other).content_sha256()
        );
    }
}
