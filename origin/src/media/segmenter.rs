//! Where segments start and what they are called: the epoch-locked numbering rule.
//!
//! The rule itself is stated in the [module doc of `media`](super#numbering-rule-epoch-locking);
//! this module implements it on the stream's own timeline. [`Timeline`] turns RTMP's wrapping
//! 32-bit millisecond timestamps into a monotonic `i64`; [`Segmenter`] looks only at keyframe
//! timestamps (and at encoder reconnects) and never at a clock or a counter of its own.
//! [`NumberingState`] is what a stream's numbering must remember across publishes and origin
//! restarts; the caller persists it and hands it to [`Segmenter::restore`].

use serde::{Deserialize, Serialize};

/// Unwraps RTMP's u32 millisecond timestamps (which wrap every 2³² ms ≈ 49.7 days) into a
/// monotonic `i64` timeline that starts at the first timestamp seen.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    last: Option<(u32, i64)>,
}

impl Timeline {
    /// A timeline that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `raw` onto the timeline. Each timestamp is read as the closest point to the previous
    /// one (a signed 32-bit step), so the wrap moves forward and the small backward steps of
    /// interleaved audio and video stay small backward steps.
    pub fn unwrap(&mut self, raw: u32) -> i64 {
        let unwrapped = match self.last {
            None => i64::from(raw),
            Some((last_raw, last)) => last + i64::from(raw.wrapping_sub(last_raw) as i32),
        };
        self.last = Some((raw, unwrapped));
        unwrapped
    }

    /// Forgets the past: the next timestamp starts a new timeline (after an encoder reconnect).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// How a segment opened by a keyframe is numbered and whether it may be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStart {
    /// Media sequence number; the segment is named `"<sequence>.ts"`.
    pub sequence: u64,
    /// Discontinuity sequence number (RFC 8216 §4.3.3.3) of this segment.
    pub discontinuity_sequence: u64,
    /// Whether an EXT-X-DISCONTINUITY precedes this segment.
    pub discontinuity: bool,
    /// False for the segment a mid-stream joiner opens at its first keyframe, which another
    /// origin may have cut differently (see the numbering rule); such a segment is dropped.
    pub publish: bool,
}

/// Where a stream's numbering stands after its last published segment: what a new publish on
/// the stream (or the same publish, after an origin restart) needs to continue it (see
/// [numbering across publishes](super#numbering-across-publishes-and-restarts)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberingState {
    /// Sequence number of the last published segment.
    pub last_sequence: u64,
    /// Its discontinuity sequence number.
    pub discontinuity_sequence: u64,
    /// Its `sequence − slot`: the offset that numbers its timeline.
    pub offset: i64,
}

/// What a keyframe means for the segment in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeDecision {
    /// The keyframe belongs to the current segment.
    Continue,
    /// The keyframe closes the current segment and opens this one.
    Start(SegmentStart),
}

/// Decides segment starts and numbers from keyframe timestamps on one stream's timeline.
#[derive(Debug, Clone)]
pub struct Segmenter {
    target_ms: i64,
    /// A keyframe this much before a slot boundary counts as on it (see the numbering rule).
    tolerance_ms: i64,
    /// `sequence = slot + offset` on the current timeline; `None` between a discontinuity and
    /// the first keyframe after it, which fixes the offset.
    offset: Option<i64>,
    /// The sequence number the first segment after a discontinuity gets.
    base_after_discontinuity: i64,
    prev_keyframe_ms: Option<i64>,
    /// Sequence slot of the latest keyframe / latest frame of any kind on this timeline.
    last_keyframe_seq: Option<i64>,
    last_frame_seq: Option<i64>,
    discontinuity_sequence: u64,
    discontinuity_pending: bool,
    /// The numbering this segmenter was restored from, until the first keyframe decides
    /// whether it continues that timeline or starts a new one after it.
    restored: Option<NumberingState>,
}

impl Segmenter {
    /// A segmenter for segments of `target_ms` (clamped to at least 1 ms).
    pub fn new(target_ms: u32) -> Self {
        let target_ms = i64::from(target_ms.max(1));
        Self {
            target_ms,
            tolerance_ms: target_ms / 8,
            offset: Some(0),
            base_after_discontinuity: 0,
            prev_keyframe_ms: None,
            last_keyframe_seq: None,
            last_frame_seq: None,
            discontinuity_sequence: 0,
            discontinuity_pending: false,
            restored: None,
        }
    }

    /// A segmenter for a stream whose numbering stood at `state` (an earlier publish, or this
    /// publish before the origin restarted). Its first keyframe decides: if the slot rule
    /// with `state.offset` numbers it past `state.last_sequence`, the encoder's clock kept
    /// running and numbering continues on that timeline, exactly as on an origin that never
    /// stopped; otherwise the timestamps restarted, and numbering continues as after
    /// [`Segmenter::discontinuity`] — one past `state.last_sequence`, discontinuity sequence
    /// incremented, first segment flagged.
    pub fn restore(target_ms: u32, state: NumberingState) -> Self {
        let mut segmenter = Self::new(target_ms);
        segmenter.offset = None;
        segmenter.base_after_discontinuity =
            i64::try_from(state.last_sequence.saturating_add(1)).unwrap_or(i64::MAX);
        segmenter.discontinuity_sequence = state.discontinuity_sequence;
        segmenter.restored = Some(state);
        segmenter
    }

    /// The slot a timestamp falls in: slot `k` is `[kT − T/8, (k+1)T − T/8)`.
    pub fn slot(&self, t_ms: i64) -> i64 {
        (t_ms + self.tolerance_ms).div_euclid(self.target_ms)
    }

    /// Records a non-keyframe (video or audio) at `t_ms`, so that a reconnect right after it
    /// numbers past it.
    pub fn on_frame(&mut self, t_ms: i64) {
        if let Some(offset) = self.offset {
            let seq = self.slot(t_ms) + offset;
            self.last_frame_seq = Some(self.last_frame_seq.map_or(seq, |s| s.max(seq)));
        }
    }

    /// Decides what a video keyframe at `t_ms` does.
    pub fn on_keyframe(&mut self, t_ms: i64) -> KeyframeDecision {
        let slot = self.slot(t_ms);
        let first_on_timeline = t_ms == 0 || self.slot(t_ms - 1) < slot;
        let (offset, publish) = match (self.offset, self.prev_keyframe_ms) {
            (None, _) => match self.restored.take() {
                // The encoder's clock kept running while this origin restarted: the timeline
                // goes on, and so does the question of whether this keyframe starts a segment.
                Some(state)
                    if i128::from(slot) + i128::from(state.offset)
                        > i128::from(state.last_sequence) =>
                {
                    (state.offset, Some(first_on_timeline))
                }
                Some(_) => {
                    self.discontinuity_sequence += 1;
                    self.discontinuity_pending = true;
                    (self.base_after_discontinuity - slot, Some(true))
                }
                // First keyframe after a reconnect: every origin that saw the reconnect saw it.
                None => (self.base_after_discontinuity - slot, Some(true)),
            },
            // First keyframe ever: a start only if no earlier keyframe could share its slot —
            // at timestamp 0, or exactly on the slot's first millisecond.
            (Some(offset), None) => (offset, Some(first_on_timeline)),
            (Some(offset), Some(prev)) if self.slot(prev) < slot => (offset, Some(true)),
            (Some(offset), Some(_)) => (offset, None),
        };
        self.offset = Some(offset);
        self.prev_keyframe_ms = Some(t_ms);
        let seq = slot + offset;
        self.last_keyframe_seq = Some(self.last_keyframe_seq.map_or(seq, |s| s.max(seq)));
        self.on_frame(t_ms);

        let Some(publish) = publish else {
            return KeyframeDecision::Continue;
        };
        // A negative slot can only come from timestamps stepping back before the stream's
        // start; such a segment has no name to publish under.
        let sequence = u64::try_from(seq).ok();
        let publish = publish && sequence.is_some();
        let discontinuity = publish && std::mem::take(&mut self.discontinuity_pending);
        KeyframeDecision::Start(SegmentStart {
            sequence: sequence.unwrap_or(0),
            discontinuity_sequence: self.discontinuity_sequence,
            discontinuity,
            publish,
        })
    }

    /// The encoder reconnected (or the publish ended): a new timeline follows, numbered from
    /// one past the slot of the last keyframe (or, without one, the last frame) seen. Returns
    /// false, changing nothing, if nothing was seen since the previous discontinuity.
    pub fn discontinuity(&mut self) -> bool {
        let Some(last) = self.last_keyframe_seq.or(self.last_frame_seq) else {
            return false;
        };
        self.base_after_discontinuity = last + 1;
        self.offset = None;
        self.prev_keyframe_ms = None;
        self.last_keyframe_seq = None;
        self.last_frame_seq = None;
        self.discontinuity_sequence += 1;
        self.discontinuity_pending = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds keyframes and returns (time, start) for each segment start.
    fn starts(segmenter: &mut Segmenter, keyframes: &[i64]) -> Vec<(i64, SegmentStart)> {
        keyframes
            .iter()
            .filter_map(|t| match segmenter.on_keyframe(*t) {
                KeyframeDecision::Start(start) => Some((*t, start)),
                KeyframeDecision::Continue => None,
            })
            .collect()
    }

    fn published(starts: &[(i64, SegmentStart)]) -> Vec<(i64, u64)> {
        starts
            .iter()
            .filter(|(_, s)| s.publish)
            .map(|(t, s)| (*t, s.sequence))
            .collect()
    }

    #[test]
    fn timestamps_unwrap_across_the_32_bit_wrap() {
        let mut timeline = Timeline::new();
        assert_eq!(timeline.unwrap(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(timeline.unwrap(5), i64::from(u32::MAX) + 6);
        assert_eq!(timeline.unwrap(u32::MAX - 2), i64::from(u32::MAX) - 2);
        assert_eq!(timeline.unwrap(30), i64::from(u32::MAX) + 31);
        timeline.reset();
        assert_eq!(timeline.unwrap(7), 7);
    }

    #[test]
    fn segments_start_only_at_keyframes_that_cross_a_slot_boundary() {
        let mut segmenter = Segmenter::new(2000);
        // keyint 1 s: every second keyframe crosses a 2 s boundary.
        let keyframes: Vec<i64> = (0..8).map(|i| i * 1000).collect();
        let starts = starts(&mut segmenter, &keyframes);
        assert_eq!(
            published(&starts),
            vec![(0, 0), (2000, 1), (4000, 2), (6000, 3)]
        );
    }

    #[test]
    fn keyframes_stamped_slightly_early_still_land_on_their_boundary() {
        let mut segmenter = Segmenter::new(2000);
        let starts = starts(&mut segmenter, &[0, 1999, 4001, 5990, 8000]);
        assert_eq!(
            published(&starts),
            vec![(0, 0), (1999, 1), (4001, 2), (5990, 3), (8000, 4)]
        );
    }

    #[test]
    fn sparse_keyframes_make_long_segments_and_skip_sequence_numbers() {
        let mut segmenter = Segmenter::new(2000);
        let starts = starts(&mut segmenter, &[0, 3000, 6000, 9000]);
        assert_eq!(
            published(&starts),
            vec![(0, 0), (3000, 1), (6000, 3), (9000, 4)]
        );
    }

    #[test]
    fn a_joiner_publishes_from_its_first_certain_start_with_the_same_numbers() {
        let keyframes: Vec<i64> = (0..20).map(|i| i * 1000).collect();
        let mut first = Segmenter::new(2000);
        let all = published(&starts(&mut first, &keyframes));

        // Joined 7 s in: the keyframe at 7 s is its first and cannot be a start; 8 s can.
        let mut joiner = Segmenter::new(2000);
        let joined = starts(&mut joiner, &keyframes[7..]);
        assert!(!joined[0].1.publish);
        let joined = published(&joined);
        assert_eq!(joined[0], (8000, 4));
        assert!(all.ends_with(&joined));

        // Restarted so its first keyframe is 10 s, on a boundary — but a keyframe at 9.8 s
        // could have been in the same slot, so it still waits for the next start.
        let mut restarted = Segmenter::new(2000);
        let restarted = published(&starts(&mut restarted, &keyframes[10..]));
        assert_eq!(restarted[0], (12_000, 6));
        assert!(all.ends_with(&restarted));
    }

    #[test]
    fn a_joiner_whose_first_keyframe_is_off_the_grid_skips_only_that_segment() {
        // Keyframes at 500 + 2000k: with a 250 ms tolerance none is on a slot's first ms.
        let keyframes: Vec<i64> = (0..10).map(|i| 500 + i * 2000).collect();
        let mut first = Segmenter::new(2000);
        let all = starts(&mut first, &keyframes);
        assert!(!all[0].1.publish, "500 ms might follow a keyframe at 0");
        let mut joiner = Segmenter::new(2000);
        let joined = published(&starts(&mut joiner, &keyframes[3..]));
        assert_eq!(joined[0].0, keyframes[4]);
        assert!(published(&all).ends_with(&joined));
    }

    #[test]
    fn discontinuity_continues_numbering_past_the_last_keyframe() {
        let mut segmenter = Segmenter::new(2000);
        let before = published(&starts(&mut segmenter, &[0, 2000, 4000, 5000]));
        assert_eq!(before.last(), Some(&(4000, 2)));
        segmenter.on_frame(5900);
        assert!(segmenter.discontinuity());
        // The encoder restarts its clock at 0.
        let after = starts(&mut segmenter, &[0, 2000, 4000]);
        let first = after[0].1;
        assert!(first.publish && first.discontinuity);
        assert_eq!((first.sequence, first.discontinuity_sequence), (3, 1));
        assert_eq!(
            after
                .iter()
                .map(|(_, s)| (s.sequence, s.discontinuity_sequence, s.discontinuity))
                .collect::<Vec<_>>(),
            vec![(3, 1, true), (4, 1, false), (5, 1, false)]
        );
    }

    #[test]
    fn discontinuity_with_a_clock_that_keeps_running_stays_monotonic() {
        let mut segmenter = Segmenter::new(2000);
        starts(&mut segmenter, &[0, 2000]);
        assert!(segmenter.discontinuity());
        let after = published(&starts(&mut segmenter, &[3100, 4000, 6000]));
        assert_eq!(after, vec![(3100, 2), (4000, 3), (6000, 4)]);
    }

    #[test]
    fn repeated_discontinuity_without_new_media_changes_nothing() {
        let mut segmenter = Segmenter::new(2000);
        assert!(!segmenter.discontinuity(), "nothing seen yet");
        starts(&mut segmenter, &[0]);
        assert!(segmenter.discontinuity());
        assert!(!segmenter.discontinuity());
        let after = published(&starts(&mut segmenter, &[0]));
        assert_eq!(after, vec![(0, 1)]);
    }

    fn state(last_sequence: u64, discontinuity_sequence: u64, offset: i64) -> NumberingState {
        NumberingState {
            last_sequence,
            discontinuity_sequence,
            offset,
        }
    }

    #[test]
    fn restored_numbering_continues_past_the_last_sequence_when_timestamps_restart() {
        // The earlier publish ended at 41.ts on offset 30, in discontinuity sequence 2.
        let mut segmenter = Segmenter::restore(2000, state(41, 2, 30));
        let after = starts(&mut segmenter, &[0, 2000, 4000]);
        assert_eq!(
            after
                .iter()
                .map(|(_, s)| (
                    s.sequence,
                    s.discontinuity_sequence,
                    s.discontinuity,
                    s.publish
                ))
                .collect::<Vec<_>>(),
            vec![
                (42, 3, true, true),
                (43, 3, false, true),
                (44, 3, false, true)
            ]
        );
    }

    #[test]
    fn restored_numbering_while_the_clock_kept_running_matches_a_segmenter_that_never_stopped() {
        let keyframes: Vec<i64> = (0..20).map(|i| i * 1000).collect();
        // An earlier publish moved this stream's numbering to offset 7.
        let mut never_stopped = Segmenter::restore(2000, state(6, 0, 0));
        let all = published(&starts(&mut never_stopped, &keyframes));
        assert_eq!(all[0], (0, 7));
        // Restarted after publishing 9.ts (keyframe at 4 s); back from 9 s on.
        let mut restarted = Segmenter::restore(2000, state(9, 1, 7));
        let after = starts(&mut restarted, &keyframes[9..]);
        assert!(
            !after[0].1.publish,
            "cannot know whether 9 s starts a segment"
        );
        assert!(after
            .iter()
            .all(|(_, s)| !s.discontinuity && s.discontinuity_sequence == 1));
        let after = published(&after);
        assert_eq!(after[0], (10_000, 12));
        assert!(all.ends_with(&after));
    }

    #[test]
    fn two_segmenters_seeing_the_same_reconnect_agree() {
        let run = |skip: usize| {
            let mut segmenter = Segmenter::new(2000);
            let mut out = published(&starts(&mut segmenter, &[0, 2000, 4000, 6000][skip..]));
            segmenter.discontinuity();
            out.extend(published(&starts(&mut segmenter, &[0, 2000])));
            out
        };
        let full = run(0);
        let late = run(2);
        assert!(full.ends_with(&late));
        assert_eq!(late, vec![(6000, 3), (0, 4), (2000, 5)]);
    }
}
