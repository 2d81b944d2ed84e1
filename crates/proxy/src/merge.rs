//! Combining the replies of a command sent to several shards into the one reply the client
//! expects (see [`Merge`]).

use flotilla_resp::Value;

use crate::command::Merge;

/// Merges `replies`, one per shard in shard order, as `merge` says. Any error reply wins (the
/// first one), so the client sees why part of the command failed.
pub fn merge_replies(merge: Merge, replies: Vec<Value>) -> Value {
    if merge == Merge::AnyOk {
        let ok = replies.iter().any(|r| !r.is_error());
        return if ok {
            Value::simple("OK")
        } else {
            replies.into_iter().next().unwrap_or_else(unexpected)
        };
    }
    if let Some(error) = replies.iter().find(|r| r.is_error()) {
        return error.clone();
    }
    match merge {
        Merge::SumIntegers => fold_integers(&replies, 0, i64::saturating_add),
        Merge::MinInteger => fold_integers(&replies, i64::MAX, i64::min),
        Merge::AllOk | Merge::AnyOk => Value::simple("OK"),
        Merge::ConcatArrays => concat(replies),
        Merge::FirstNonNull => replies
            .into_iter()
            .find(|r| !r.is_null())
            .unwrap_or(Value::NullBulkString),
        Merge::Same => replies.into_iter().next().unwrap_or(Value::Null),
        Merge::ElementwiseMin => elementwise_min(replies),
        Merge::NewestFirst => newest_first(replies),
        Merge::ArrayInRequestOrder | Merge::Info => unexpected(),
    }
}

/// The reply when a shard answered something the merge cannot use.
pub(crate) fn unexpected() -> Value {
    Value::error("ERR unexpected reply from a shard")
}

fn fold_integers(replies: &[Value], start: i64, f: fn(i64, i64) -> i64) -> Value {
    let mut acc = start;
    for reply in replies {
        match reply {
            Value::Integer(n) => acc = f(acc, *n),
            _ => return unexpected(),
        }
    }
    Value::Integer(acc)
}

fn concat(replies: Vec<Value>) -> Value {
    let mut all = Vec::new();
    for reply in replies {
        match reply {
            Value::Array(items) | Value::Set(items) => all.extend(items),
            _ => return unexpected(),
        }
    }
    Value::Array(all)
}

/// Log entries of every shard, newest first by their second element (a unix time); the
/// count the client asked for is applied by [`crate::admin`].
fn newest_first(replies: Vec<Value>) -> Value {
    let Value::Array(mut all) = concat(replies) else {
        return unexpected();
    };
    let time = |entry: &Value| match entry {
        Value::Array(fields) => match fields.get(1) {
            Some(Value::Integer(t)) => *t,
            _ => 0,
        },
        _ => 0,
    };
    all.sort_by_key(|entry| std::cmp::Reverse(time(entry)));
    Value::Array(all)
}

fn elementwise_min(replies: Vec<Value>) -> Value {
    let mut result: Option<Vec<i64>> = None;
    for reply in replies {
        let Value::Array(items) = reply else {
            return unexpected();
        };
        let numbers: Option<Vec<i64>> = items
            .iter()
            .map(|v| match v {
                Value::Integer(n) => Some(*n),
                _ => None,
            })
            .collect();
        let Some(numbers) = numbers else {
            return unexpected();
        };
        result = Some(match result {
            None => numbers,
            Some(acc) if acc.len() == numbers.len() => {
                acc.iter().zip(&numbers).map(|(a, b)| *a.min(b)).collect()
            }
            Some(_) => return unexpected(),
        });
    }
    Value::Array(
        result
            .unwrap_or_default()
            .into_iter()
            .map(Value::Integer)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_succeeds_where_a_script_runs() {
        let notbusy = || Value::error("NOTBUSY No scripts in execution right now.");
        assert_eq!(
            merge_replies(Merge::AnyOk, vec![notbusy(), Value::simple("OK")]),
            Value::simple("OK")
        );
        assert_eq!(
            merge_replies(Merge::AnyOk, vec![notbusy(), notbusy()]),
            notbusy()
        );
    }

    #[test]
    fn merges_combine_shard_replies() {
        let ints = || vec![Value::Integer(2), Value::Integer(5)];
        assert_eq!(merge_replies(Merge::SumIntegers, ints()), Value::Integer(7));
        assert_eq!(merge_replies(Merge::MinInteger, ints()), Value::Integer(2));
        assert_eq!(
            merge_replies(Merge::AllOk, vec![Value::simple("OK"), Value::simple("OK")]),
            Value::simple("OK")
        );
        assert_eq!(
            merge_replies(
                Merge::ConcatArrays,
                vec![
                    Value::Array(vec![Value::bulk("a")]),
                    Value::Array(vec![Value::bulk("b")])
                ]
            ),
            Value::Array(vec![Value::bulk("a"), Value::bulk("b")])
        );
        assert_eq!(
            merge_replies(
                Merge::FirstNonNull,
                vec![Value::NullBulkString, Value::bulk("k")]
            ),
            Value::bulk("k")
        );
        assert_eq!(
            merge_replies(Merge::FirstNonNull, vec![Value::NullBulkString]),
            Value::NullBulkString
        );
        assert_eq!(
            merge_replies(
                Merge::ElementwiseMin,
                vec![
                    Value::Array(vec![Value::Integer(1), Value::Integer(1)]),
                    Value::Array(vec![Value::Integer(1), Value::Integer(0)])
                ]
            ),
            Value::Array(vec![Value::Integer(1), Value::Integer(0)])
        );
    }

    #[test]
    fn errors_and_odd_replies_are_reported() {
        assert_eq!(
            merge_replies(
                Merge::SumIntegers,
                vec![Value::Integer(1), Value::error("ERR boom")]
            ),
            Value::error("ERR boom")
        );
        assert_eq!(
            merge_replies(Merge::SumIntegers, vec![Value::bulk("x")]),
            unexpected()
        );
    }
}
