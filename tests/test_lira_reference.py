"""LiRA against its reference implementation (issue 25).

The expected scores below were produced once by running the authors' published code,
tensorflow/privacy ``research/mi_lira_2021`` at commit
03035d5d4a271ac795dab80f5bc1cef82fc3d462 (the folder last changed in
27069d347d3848142a58c29c136e21967ebe955b): ``score.py`` turned the fixture's logits (saved as
``inference.py`` saves them, ``(examples, 1, views, classes)``) into its statistic, and
``plot.py``'s ``generate_ours`` / ``generate_ours_offline`` (with and without
``fix_variance=True``) scored the last two models with the first eight as shadow models; the
numbers are ``-prediction`` (``plot.py`` ranks by ``-prediction``), for both views (image and
mirror) and for the first view alone. The reference code is not part of the package.

Settings we share with it: median centres, the reference's global variance and per-example
variances, views averaged, online, and the offline test in its two-sided form
(``offline_test="two-sided"``; our default is one-sided, see :mod:`mcmia_helpers.attacks.lira`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcmia_helpers.attacks.lira import lira_scores
from mcmia_helpers.attacks.scores import logit_confidence

E, M, V, C = 10, 10, 2, 3
MULTS = [3, 7, 9, 11, 13]


def _fixture():
    """A fixed logits fixture: 10 models (8 shadow, 2 targets) in complementary pairs, 10
    examples of 3 classes, 2 views; a model that trained on an example is more confident."""
    labels = np.arange(E) % 3
    keep = np.zeros((M, E), dtype=bool)
    for k in range(M // 2):
        half = (np.arange(E) * MULTS[k] + k) % E < E // 2
        keep[2 * k], keep[2 * k + 1] = half, ~half
    m, e, v, c = np.meshgrid(np.arange(M), np.arange(E), np.arange(V), np.arange(C), indexing="ij")
    logits = 2.0 * np.sin(1.7 * m + 2.3 * e + 0.9 * v + 1.1 * c)
    boost = (1.5 + 0.3 * np.cos(e)) * (c == labels[e]) * (1 + keep[m, e])
    return labels, keep, logits + boost


EXPECTED = {
    ('online_global', 'both'): [
        1.1256352620652148, -0.8339645288520248, 2.7112187331415027, 2.1409456645403213,
        -0.17817935346524183, -0.5834761171255494, 1.148247506743403, -1.180994186791152,
        -2.542609949015946, -0.14360274395838024, 0.5628191836895591, 0.7016177211899988,
        -4.689759340336231, 0.08697559595628124, 0.29757193719958464, -1.1126181488372242,
        -0.18583596273368874, 2.229796298193976, -1.2981097954887577, 1.61197215521154,
    ],
    ('online_global', 'one'): [
        1.330831946333437, -1.0721356682344774, 4.685610639397871, 3.4298719595421323,
        -0.11746941699861768, -0.3119628834506054, 3.080608159114656, -1.992542092236446,
        -1.7777785565015465, -0.14532966159812633, 1.3134802001202042, 0.2053911782673712,
        -3.3645918141759648, 1.122336360247029, 0.09598244403815492, -1.7047507424232733,
        -1.4231190669629785, 2.601807417072985, -2.603219742593046, 0.12258983419130676,
    ],
    ('online_per_example', 'both'): [
        0.6329870778555985, -3.0086302098198, 1.9065841974958648, 2.3253147501319913,
        -5.62638765209899, 0.480421311723339, 0.6280900483781096, -5.6456449850590475,
        -3.791405209863286, 0.9208103933398425, 0.4957077661316275, 3.084600913619587,
        -7.122546455479657, 0.1254148640164814, -0.6243213701559807, -0.8086597889613815,
        -0.38150406648185853, 192.59201035491128, -3.0661261345747337, 1.1730389073921292,
    ],
    ('online_per_example', 'one'): [
        0.885830686801558, -3.7123259784901608, 2.9564827498861197, 4.18254707139771,
        -9.686728865628016, -0.08298633276726464, 1.8845887090546425, -9.628117412399654,
        -4.214688492098309, 1.724993197985956, 0.9055366826451114, 2.9837205144314805,
        -7.905084008890558, 1.187062812985002, -2.6449299602355643, -1.1498647042411028,
        -1.1047469254615745, 373.72554475409106, -6.023700074959631, 1.2958001568602624,
    ],
    ('offline_global', 'both'): [
        3.2331855709479873, 1.507878912453476, 4.110858352646351, 3.87203104592695,
        1.6435457877619373, 1.7578411750606184, 3.4563821406489867, 1.5114505260565365,
        1.8723913177172875, 2.30348790691449, 2.121584904672892, 2.2500145597789856,
        1.6233486815943037, 2.2553014240809315, 2.1834981716521877, 1.6848640008565687,
        2.9091426361651487, 3.6207603808536106, 1.6388013814625932, 3.9884460457105497,
    ],
    ('offline_global', 'one'): [
        2.761962119121378, 1.5134347083738868, 5.329291767864151, 4.41394837666911,
        1.6566455376418012, 1.5629293625465823, 4.738581439582294, 1.5039319794077124,
        1.6645175213713115, 2.9701178907778587, 2.7389655201262286, 1.759136428489686,
        1.5014523107710676, 2.4679227561645156, 1.6748909403274055, 1.691834850065264,
        1.5296489000174467, 3.625658958166004, 1.5439842659237184, 2.635992914165694,
    ],
    ('offline_per_example', 'both'): [
        2.9384375066620128, 0.6362949155458449, 3.5424079867577127, 4.43798060743616,
        1.4158179237887625, 2.613767690286383, 3.178181800516546, 0.08715556950376846,
        1.9219038171643987, 3.1158723639291717, 2.0305079462917575, 4.52484050204705,
        1.7315225245282126, 2.4299820553501164, 4.394523863715192, 1.7845831682911335,
        2.8491738996643985, 194.17146076310368, 1.713438812860928, 3.950982113749678,
    ],
    ('offline_per_example', 'one'): [
        2.4765620985992522, 0.31753784779088245, 4.25132793666851, 5.912318954164789,
        1.4273535746562918, 1.7401124690670962, 4.22172475619297, -0.5819486319421765,
        1.7643655084063692, 4.43883626842649, 2.4652020406862327, 4.183914542122279,
        1.705188261233443, 2.8094188425374935, 1.4750145278192106, 1.8269788689364628,
        1.631177845853311, 374.734117203465, 1.6732109244728401, 3.6769148128014213,
    ],
}


def _stats() -> tuple[torch.Tensor, torch.Tensor]:
    labels, keep, logits = _fixture()
    lg = torch.tensor(logits).permute(0, 2, 1, 3)  # (M, V, E, C)
    stats = logit_confidence(lg, torch.tensor(labels).expand(M, V, -1)).permute(0, 2, 1)
    return stats, torch.tensor(keep)  # (M, E, V), (M, E)


@pytest.mark.parametrize("setting, views", sorted(EXPECTED))
def test_lira_scores_match_the_reference_implementation(setting: str, views: str) -> None:
    stats, keep = _stats()
    if views == "one":
        stats = stats[:, :, :1]
    online = setting.startswith("online")
    global_variance = setting.endswith("global")
    ours = np.concatenate([lira_scores(stats[t], stats[:8], keep[:8], online, global_variance,
                                       centre="median", variance="reference",
                                       offline_test="two-sided") for t in (8, 9)])
    np.testing.assert_allclose(ours, EXPECTED[(setting, views)], rtol=1e-12, atol=1e-12)


def test_the_defaults_are_the_references_online_settings() -> None:
    stats, keep = _stats()
    default = lira_scores(stats[8], stats[:8], keep[:8], True, True)
    np.testing.assert_allclose(default, EXPECTED[("online_global", "both")][:E], rtol=1e-12)


def test_the_old_estimates_differ_from_the_reference() -> None:
    """Means instead of medians, or the pooled within-example variance, give other scores on
    the same fixture: the reference test above tells them apart."""
    stats, keep = _stats()
    ref = np.asarray(EXPECTED[("online_global", "both")][:E])
    for options in ({"centre": "mean"}, {"variance": "pooled"}):
        other = lira_scores(stats[8], stats[:8], keep[:8], True, True, **options)
        assert np.abs(other - ref).max() > 1e-3


def test_one_sided_offline_is_monotone_in_the_statistic_and_two_sided_is_not() -> None:
    """Our offline test (the paper's) flags an example more the higher its statistic; the
    reference's two-sided form also flags statistics far *below* the OUT centre."""
    stats, keep = _stats()
    x = stats[8].clone()
    low, high = x.clone(), x.clone()
    low[0, :] -= 20.0
    high[0, :] += 20.0
    one = [lira_scores(t, stats[:8], keep[:8], False, True)[0] for t in (low, x, high)]
    two = [lira_scores(t, stats[:8], keep[:8], False, True, offline_test="two-sided")[0]
           for t in (low, x, high)]
    assert one[0] < one[1] < one[2]
    assert two[0] > two[1] and two[2] > two[1]


def test_offline_lira_centres_on_means_by_default_and_online_on_medians() -> None:
    """The centres chosen by measurement (``benchmarks/lira_variants.py``): medians online, as
    the reference; means offline, where they named more members at 1% FPR."""
    stats, keep = _stats()
    for online, default, other in ((True, "median", "mean"), (False, "mean", "median")):
        base = lira_scores(stats[8], stats[:8], keep[:8], online, True)
        np.testing.assert_array_equal(
            base, lira_scores(stats[8], stats[:8], keep[:8], online, True, centre=default))
        assert not np.allclose(base, lira_scores(stats[8], stats[:8], keep[:8], online, True,
                                                 centre=other))
