//! Decisions: a score and a transaction's channel, against the threshold set
//! in force, give approve / review / decline.
//!
//! This module owns the threshold set and its identity (a content hash that
//! `threshold_sets` turns into a version number). It never looks at models
//! or storage: deciding is a pure function, so a backtest can replay it.

use crate::config::{ThresholdConfig, Thresholds};
use crate::event::Channel;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

/// The thresholds in force, with the version Postgres assigned to them.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdSet {
    pub config: ThresholdConfig,
    /// `threshold_sets.version`; 0 until registered.
    pub version: i32,
}

impl ThresholdSet {
    pub fn new(config: ThresholdConfig) -> Self {
        ThresholdSet { config, version: 0 }
    }

    /// Thresholds for a channel: its override if any, else the defaults.
    pub fn for_channel(&self, channel: Option<Channel>) -> Thresholds {
        channel
            .and_then(|c| self.config.channel.get(c.as_str()))
            .cloned()
            .unwrap_or(Thresholds {
                review: self.config.review,
                decline: self.config.decline,
            })
    }

    /// A score at or above a threshold takes that action; decline wins.
    pub fn decide(&self, score: f32, channel: Option<Channel>) -> Decision {
        let t = self.for_channel(channel);
        if score >= t.decline {
            Decision::Decline
        } else if score >= t.review {
            Decision::Review
        } else {
            Decision::Approve
        }
    }

    /// The canonical JSON stored in `threshold_sets` (who changed it is not
    /// part of what the thresholds are).
    pub fn canonical_json(&self) -> serde_json::Value {
        serde_json::json!({
            "review": self.config.review,
            "decline": self.config.decline,
            "channel": self.config.channel,
        })
    }

    /// Identity of the content: equal thresholds get the same version.
    pub fn content_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().to_string().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn set() -> ThresholdSet {
        let mut channel = BTreeMap::new();
        channel.insert(
            "ecom".to_string(),
            Thresholds {
                review: 0.3,
                decline: 0.6,
            },
        );
        ThresholdSet::new(ThresholdConfig {
            review: 0.5,
            decline: 0.9,
            changed_by: "ops".into(),
            channel,
        })
    }

    #[test]
    fn thresholds_are_inclusive_and_channel_overrides_apply() {
        let s = set();
        assert_eq!(s.decide(0.49, Some(Channel::Pos)), Decision::Approve);
        assert_eq!(s.decide(0.5, Some(Channel::Pos)), Decision::Review);
        assert_eq!(s.decide(0.9, None), Decision::Decline);
        assert_eq!(s.decide(0.35, Some(Channel::Ecom)), Decision::Review);
        assert_eq!(s.decide(0.6, Some(Channel::Ecom)), Decision::Decline);
    }

    #[test]
    fn version_identity_ignores_who_changed_it() {
        let mut other = set();
        other.config.changed_by = "someone else".into();
        assert_eq!(set().content_sha256(), other.content_sha256());
        other.config.decline = 0.95;
        assert_ne!(set().content_sha256(), other.content_sha256());
    }
}
