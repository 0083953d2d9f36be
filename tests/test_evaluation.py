import pytest

from autodidact.evaluation import answer_is_correct, heldout_scores


def test_heldout_scores_are_squad_exact_match_and_token_f1_as_shares():
    scores = heldout_scores(["Ilse Varnholt.", "The captain is Tobin."],
                            ["Ilse Varnholt.", "Ilse Varnholt is the captain."])
    # Row 1 matches exactly; row 2 shares "captain" and "is" of 4 reference tokens after SQuAD's
    # normalisation (articles and punctuation dropped): P 2/3, R 2/4 -> F1 4/7.
    assert scores["exact_match"] == 0.5
    assert scores["token_f1"] == pytest.approx((1.0 + 4 / 7) / 2, abs=1e-4)


def test_heldout_scores_of_nothing_are_none():
    assert heldout_scores([], []) == {"exact_match": None, "token_f1": None}


def test_a_lenient_verdict_beside_the_strict_scores():
    # Right by the project's verdict (every number, most content words), though not an exact match.
    assert answer_is_correct("It melts at 412 degrees Celsius.", "Velmorite melts at 412 degrees Celsius.")
    assert heldout_scores(["It melts at 412 degrees Celsius."],
                          ["Velmorite melts at 412 degrees Celsius."])["exact_match"] == 0.0
