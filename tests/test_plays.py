"""utils/plays.py on the real corpus: plays found, speeches attributed, offsets exact."""

import collections
from itertools import pairwise

import pytest

from utils.data import load_corpus, train_val_split
from utils.plays import (
    GENRES,
    PLAYS,
    Speech,
    load_plays,
    load_speeches,
    looks_like_speaker,
    play_of,
    play_spans,
    split_of,
    val_start,
)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def speeches():
    return load_speeches()


def test_nine_plays_in_corpus_order_cover_the_text(corpus):
    plays = load_plays()
    assert list(plays) == list(PLAYS) and len(plays) == 9
    spans = list(play_spans().values())
    assert spans[0][0] == 0 and spans[-1][1] == len(corpus)
    for (_, end), (next_start, _) in pairwise(spans):
        assert corpus[end] == "\n" and next_start == end + 1      # only the separator between
    assert plays["Hamlet"].startswith("HAMLET, PRINCE OF DENMARK\n")
    assert plays["Twelfth Night"].startswith("TWELFTH NIGHT; OR, WHAT YOU WILL\n")
    assert plays["The Tempest"].startswith("THE TEMPEST\n\nDRAMATIS PERSONAE")
    assert sum(len(text) for text in plays.values()) + 8 == len(corpus)


def test_every_speech_slices_back_to_its_text(corpus, speeches):
    assert all(corpus[s.start:s.end] == s.text for s in speeches)
    assert all(s.text.strip() and not s.text.startswith("\n") for s in speeches)
    starts = [s.start for s in speeches]
    assert starts == sorted(starts)                                 # in corpus order
    assert all(a.end < b.start for a, b in pairwise(speeches))   # never overlapping


def test_first_speeches_of_known_scenes(speeches):
    assert speeches[0] == Speech("Hamlet", "Ber", "Who's there?", speeches[0].start,
                                 speeches[0].start + 12)
    hamlet = next(s for s in speeches if s.speaker == "Ham")
    assert "A little more than kin, and less than kind!" in hamlet.text
    macbeth = load_speeches("Macbeth")
    assert [s.speaker for s in macbeth[:3]] == ["FIRST WITCH", "SECOND WITCH", "THIRD WITCH"]
    dream = load_speeches("A Midsummer Night's Dream")
    assert dream[0].speaker == "THESEUS" and dream[0].lines[0].startswith("Now, fair Hippolyta")
    romeo = load_speeches("Romeo and Juliet")
    assert romeo[0].speaker == "Chor" and romeo[0].lines[0] == "Two households, both alike in dignity,"


def test_headings_directions_and_front_matter_are_not_speeches(speeches):
    for s in speeches:
        assert not s.speaker.startswith(("ACT", "Act", "SCENE", "Scene", "["))
        assert not s.text.startswith(("ACT ", "SCENE ", "Scene "))
    # the list of characters is front matter, not a speech by "Claudius, King of Denmark."
    assert all("King of Denmark" not in s.text for s in load_speeches("Hamlet")[:5])
    assert not any(s.text.startswith("[") and s.text.endswith("]") and "\n" not in s.text
                   for s in speeches)


def test_continuation_after_a_stage_direction_keeps_the_speaker():
    # Theseus is interrupted by "[Exit PHILOSTRATE.]" and goes on speaking
    dream = load_speeches("A Midsummer Night's Dream")
    after = next(s for s in dream if s.text.startswith("Hippolyta, I woo'd thee"))
    assert after.speaker == "THESEUS"


def test_speaker_on_the_same_line_as_the_text():
    lear = load_speeches("King Lear")
    assert any(s.speaker == "Osw" and s.text == "Ay, madam." for s in lear)


def test_counts_per_play_and_main_speakers(speeches):
    per_play = collections.Counter(s.play for s in speeches)
    assert set(per_play) == set(PLAYS)
    assert all(400 < n < 1500 for n in per_play.values()), per_play
    top = {play: collections.Counter(s.speaker for s in speeches if s.play == play).most_common(1)[0][0]
           for play in PLAYS}
    assert top["Hamlet"] == "Ham" and top["King Lear"] == "Lear" and top["Julius Caesar"] == "BRUTUS"
    assert top["The Tempest"] == "PROSPERO" and top["Twelfth Night"] == "SIR TOBY"


@pytest.mark.parametrize("line, expected", [
    ("Ham.", True), ("1 Clown.", True), ("Mar. and Ber.", True), ("LADY MACBETH.", True),
    ("THESEUS", True), ("Lady Capulet", True),
    ("Hippolyta, I woo'd thee with my sword,", False), ("    CHORUS", False),
    ("ACT I.", False), ("SCENE II. A street.", False), ("[Exit.]", False), ("", False),
])
def test_looks_like_speaker(line, expected):
    assert looks_like_speaker(line) is expected


def test_split_boundary_matches_train_val_split(corpus, speeches):
    train, _ = train_val_split(corpus)
    assert val_start() == len(train)
    assert split_of(len(train) - 1) == "train" and split_of(len(train)) == "val"
    with pytest.raises(ValueError, match="offset"):
        split_of(len(corpus))
    # the held-out text is the end of the Dream and all of Twelfth Night
    assert {s.play for s in speeches if s.split == "val"} == {"Twelfth Night"}
    assert all(s.split == "val" for s in speeches if s.play == "Twelfth Night")
    assert play_of(len(train)) == "A Midsummer Night's Dream"


def test_genres_and_unknown_play():
    assert collections.Counter(GENRES.values()) == {"tragedy": 6, "comedy": 3}
    with pytest.raises(ValueError, match="unknown play 'Hamlett'"):
        load_speeches("Hamlett")
