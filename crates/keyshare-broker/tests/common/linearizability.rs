//! A linearizability checker for one register whose writes all write distinct values.
//!
//! For such histories linearizability is decidable in O(n log n) (Gibbons and Korach): group
//! each write with the reads that returned its value (a *cluster*); a cluster's zone runs from
//! the earliest response to the latest invocation among its operations. If the earliest
//! response comes first the zone is *forward*: the value had to be current during all of it.
//! The history is linearizable iff every read's write was invoked before the read responded,
//! no two forward zones overlap, and no backward zone (a cluster whose operations all overlap)
//! lies inside a forward zone.

#![allow(dead_code)]

use std::collections::HashMap;

/// One completed operation on the register, with invocation and response times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub write: bool,
    pub value: String,
    pub invoked: u64,
    pub responded: u64,
}

impl Op {
    pub fn write(value: &str, invoked: u64, responded: u64) -> Op {
        Op {
            write: true,
            value: value.to_owned(),
            invoked,
            responded,
        }
    }

    pub fn read(value: &str, invoked: u64, responded: u64) -> Op {
        Op {
            write: false,
            ..Op::write(value, invoked, responded)
        }
    }
}

/// `Ok` when the history is linearizable, else a description of the first violation found.
pub fn check(history: &[Op]) -> Result<(), String> {
    let mut clusters: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history {
        assert!(
            op.invoked <= op.responded,
            "{op:?} responds before it is invoked"
        );
        clusters.entry(op.value.as_str()).or_default().push(op);
    }
    let mut forward = Vec::new();
    let mut backward = Vec::new();
    for (value, ops) in &clusters {
        let writes: Vec<_> = ops.iter().filter(|o| o.write).collect();
        let [write] = writes[..] else {
            return Err(format!(
                "value {value:?} was written {} times (reads of it: {}); the checker needs \
                 exactly one write per value",
                writes.len(),
                ops.len() - writes.len()
            ));
        };
        for read in ops.iter().filter(|o| !o.write) {
            if read.responded < write.invoked {
                return Err(format!(
                    "a read returned {value:?} before its write was invoked: {read:?} {write:?}"
                ));
            }
        }
        let first_response = ops.iter().map(|o| o.responded).min().unwrap();
        let last_invocation = ops.iter().map(|o| o.invoked).max().unwrap();
        if first_response < last_invocation {
            forward.push((first_response, last_invocation, *value));
        } else {
            backward.push((last_invocation, first_response, *value));
        }
    }
    forward.sort();
    for pair in forward.windows(2) {
        let ((_, end_a, a), (start_b, _, b)) = (pair[0], pair[1]);
        if start_b < end_a {
            return Err(format!(
                "values {a:?} and {b:?} each had to be current during overlapping intervals \
                 (a read saw an overwritten value)"
            ));
        }
    }
    for (start, end, value) in &backward {
        // Forward zones are disjoint and sorted: only the last one starting before `start`
        // can contain this zone.
        let i = forward.partition_point(|(s, _, _)| s < start);
        if let Some((_, f_end, f_value)) = i.checked_sub(1).map(|i| forward[i]) {
            if *end < f_end {
                return Err(format!(
                    "{value:?} was written and read entirely while {f_value:?} had to be \
                     current (a read missed a completed write)"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_histories() {
        let ok = [
            Op::write("a", 0, 1),
            Op::read("a", 2, 3),
            Op::write("b", 4, 5),
            Op::read("b", 6, 7),
        ];
        check(&ok).unwrap();
        let stale = [
            Op::write("a", 0, 1),
            Op::write("b", 2, 3),
            Op::read("a", 4, 5),
        ];
        assert!(check(&stale).is_err());
        let future = [Op::read("a", 0, 1), Op::write("a", 2, 3)];
        assert!(check(&future).is_err());
    }

    #[test]
    fn concurrent_histories() {
        // The read overlaps both writes: either value is fine.
        for seen in ["a", "b"] {
            let h = [
                Op::write("a", 0, 10),
                Op::write("b", 2, 12),
                Op::read(seen, 1, 11),
            ];
            check(&h).unwrap();
        }
        // Two reads in sequence cannot see b then a when the writes are sequential.
        let flip = [
            Op::write("a", 0, 2),
            Op::write("b", 3, 20),
            Op::read("b", 4, 5),
            Op::read("a", 6, 7),
        ];
        assert!(check(&flip).is_err());
        // ...but may see a then b.
        let forward = [
            Op::write("a", 0, 2),
            Op::write("b", 3, 20),
            Op::read("a", 4, 5),
            Op::read("b", 6, 7),
        ];
        check(&forward).unwrap();
        // A write that completed between a write and its read must be seen.
        let missed = [
            Op::write("a", 0, 1),
            Op::write("b", 2, 3),
            Op::read("a", 0, 5),
            Op::read("a", 4, 6),
        ];
        assert!(check(&missed).is_err());
    }
}
