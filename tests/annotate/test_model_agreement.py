"""A reward model's scores against human rankings: hand-computed cases of the pure functions."""

from __future__ import annotations

from annotate.workflow.model_agreement import disagreeing_pairs, model_ranking, order_by_score


def test_model_ranking_orders_by_score_ties_equal_scores_and_leaves_out_unscored():
    scores = {"a": 1.0, "b": 3.0, "c": None, "d": 3.0, "e": -2.0}
    assert model_ranking(scores) == [["b", "d"], ["a"], ["e"]]
    assert model_ranking(scores, ["e", "d", "c"]) == [["d"], ["e"]]
    assert model_ranking({}) == []


def test_disagreeing_pairs_are_the_reversed_pairs_in_the_rankings_order():
    # Humans: a > b > c. Model: b (3) > c (2) > a (1).
    # (a, b): humans a, model b -> disagree; (a, c): humans a, model c -> disagree; (b, c): both b -> agree.
    assert disagreeing_pairs([["a"], ["b"], ["c"]], {"a": 1.0, "b": 3.0, "c": 2.0}) == [("a", "b"), ("a", "c")]
    # The model's exact reverse of four items disagrees on all 4*3/2 = 6 pairs; the same order on none.
    ranking = [["a"], ["b"], ["c"], ["d"]]
    assert len(disagreeing_pairs(ranking, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4})) == 6
    assert disagreeing_pairs(ranking, {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}) == []


def test_a_tie_in_the_human_ranking_is_no_disagreement():
    # a = b > c. Model b (2) > a (1) > c (0): a and b are tied for the humans, so nothing disagrees.
    assert disagreeing_pairs([["a", "b"], ["c"]], {"a": 1.0, "b": 2.0, "c": 0.0}) == []
    # Model c (5) above both: (a, c) and (b, c) disagree; the tied pair (a, b) still does not.
    assert disagreeing_pairs([["a", "b"], ["c"]], {"a": 1.0, "b": 2.0, "c": 5.0}) == [("a", "c"), ("b", "c")]


def test_equal_scores_and_unscored_images_never_disagree():
    # a > b > c. The model ties a and b (no opinion) and has not scored c.
    assert disagreeing_pairs([["a"], ["b"], ["c"]], {"a": 1.0, "b": 1.0, "c": None}) == []
    assert disagreeing_pairs([["a"], ["b"], ["c"]], {"a": 1.0, "b": 2.0}) == [("a", "b")]


def test_items_left_out_of_a_partial_ranking_share_its_last_place():
    # Best-of-3 answer [[a]] over items a, b, c: b and c tie last. Model c (2) > b (1) > a (0).
    # (a, b) and (a, c) disagree; b and c are tied for the humans.
    scores = {"a": 0.0, "b": 1.0, "c": 2.0}
    assert disagreeing_pairs([["a"]], scores, ["a", "b", "c"]) == [("a", "b"), ("a", "c")]
    # Without the items, only what the ranking names counts: a single item has no pair.
    assert disagreeing_pairs([["a"]], scores) == []


def test_order_by_score_puts_scored_first_highest_first_and_keeps_the_rest_in_order():
    images = [{"id": "w"}, {"id": "x"}, {"id": "y"}, {"id": "z"}]
    scores = {"x": 0.2, "z": 0.9, "y": None}
    assert [i["id"] for i in order_by_score(images, scores, key=lambda i: i["id"])] == ["z", "x", "w", "y"]
    # Equal scores keep their original order (a stable sort).
    assert order_by_score(["b", "a", "c"], {"a": 1.0, "b": 1.0, "c": 2.0}, key=str) == ["c", "b", "a"]
    assert order_by_score(["b", "a"], {}, key=str) == ["b", "a"]
