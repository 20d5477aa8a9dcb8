//! What a DNS exchange contributes to its span: the question, its type, the response code.

use crate::{
    protocol::{ATTRIBUTES_ADDED_AT_EXPORT, SpanFacts, Summary},
    trace::{
        intern::Interner,
        span::{KeyValue, SpanStatus},
    },
};

use super::message::{rcode_name, type_name};

#[derive(Debug)]
pub struct DnsSummary {
    /// The question's name as sent (`dns.question.name`).
    pub name: Box<str>,
    pub qtype: u16,
    /// The response code, `None` when no response came.
    pub rcode: Option<u8>,
    /// Answer records in the response.
    pub answers: u16,
}

impl DnsSummary {
    /// Response codes that say the lookup could not be answered (a server's or the query's
    /// fault). NXDOMAIN is an answer: resolvers try each search domain and most get it.
    fn failed(rcode: u8) -> bool {
        !matches!(rcode, 0 | 3)
    }
}

impl Summary for DnsSummary {
    fn expand(
        self,
        span: &SpanFacts,
        strings: &mut Interner,
    ) -> (std::sync::Arc<str>, Vec<KeyValue>, SpanStatus) {
        let qtype = type_name(self.qtype);
        let mut attributes = Vec::with_capacity(7 + ATTRIBUTES_ADDED_AT_EXPORT);
        attributes.push(KeyValue::shared(
            "dns.question.name",
            strings.get(&self.name),
        ));
        attributes.push(KeyValue::str("dns.question.type", qtype.clone()));
        let status = match self.rcode {
            Some(rcode) => {
                let code = rcode_name(rcode);
                attributes.push(KeyValue::str("dns.response.code", code));
                attributes.push(KeyValue::int("dns.answer.count", i64::from(self.answers)));
                if Self::failed(rcode) {
                    attributes.push(KeyValue::str("error.type", code));
                    SpanStatus::Error(format!("DNS {code}"))
                } else {
                    SpanStatus::Unset
                }
            }
            None => SpanStatus::Error("no DNS response".to_string()),
        };
        span.address_attributes(None, strings, &mut attributes);
        (strings.joined(&["DNS ", &qtype]), attributes, status)
    }

    fn describe(&self) -> String {
        let rcode = self.rcode.map_or("none", rcode_name);
        format!("{} {} -> {rcode}", type_name(self.qtype), self.name)
    }
}
