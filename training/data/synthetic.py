"""Synthetic social-feed generator.

Users, a power-law follow graph, posts with topic-bearing text, impressions with position
bias and engagement drawn from a hidden latent-factor model, and harmful labels on ~3 % of
posts. Everything is drawn from one `numpy.random.Generator` seeded by the caller, so the
same (profile, seed) gives byte-identical tables.

The hidden model. Each user has a topic preference `a_u` (Dirichlet) and a latent vector
`z_u`; each post a topic `t`, a latent vector `z_p` and a quality `q_p`. The affinity is

    s(u, p) = 2.2 * (K * a_u[t] - 1) / K**0.5 + z_u . z_p + q_p + 1.0 * follows(u, author(p))

A shown item is examined with probability (1 + position) ** -0.8 (position bias); an examined
item is clicked with probability sigmoid(s - 1.2); likes, comments and shares follow a click
with their own offsets; hides and reports rise for low affinity and harmful posts.

What is shown. The logged candidates come from the old system: a third from followed
authors' posts, most of the rest from a topic-aware retrieval (topics by the user's
preference, posts by quality), and 10 % uniform exploration. With exposure that ignored
taste, a user's next clicks followed global popularity so closely that no model of taste
could beat most-popular retrieval (BENCHMARKS.md, "What bounds retrieval on this data").

`generate_with_truth` also returns that hidden model (`HiddenTruth`), so that simulations
(benchmarks/experiments.py) can score any ranking against the true engagement probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from funnel.contracts.errors import DatasetError
from training.data.schema import AGE_BANDS, HARM_LABELS, Dataset

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sports": (("the home team", "our striker", "the coach", "the league leaders"),
               ("won the match in extra time", "scored a late goal", "signed a new contract",
                "lost the derby at the stadium")),
    "music": (("the band", "this new album", "the singer", "the festival lineup"),
              ("drops a new single tonight", "sold out the concert", "has an amazing guitar solo",
               "is touring next summer")),
    "cooking": (("my grandmother's recipe", "this pasta sauce", "the sourdough loaf",
                 "a quick curry"),
                ("needs fresh basil and garlic", "bakes in forty minutes",
                 "is the best dinner idea", "uses slow roasted tomatoes")),
    "travel": (("the mountain trail", "this beach town", "our flight to Lisbon", "the old city"),
               ("has stunning views at sunset", "is cheap in the off season",
                "was delayed at the airport", "is worth a weekend trip")),
    "tech": (("the new phone", "this laptop", "the open source release", "the chip maker"),
             ("ships with a faster processor", "fixes the battery bug",
              "adds a developer preview", "benchmarks twice as fast")),
    "politics": (("the senate", "the new mayor", "the election campaign", "parliament"),
                 ("passed the budget bill", "announced a policy debate",
                  "published the poll results", "voted on the reform")),
    "fitness": (("my morning run", "this workout plan", "the yoga class", "leg day"),
                ("builds strength in six weeks", "burned four hundred calories",
                 "improves your stamina", "starts with a stretching routine")),
    "gaming": (("the new rpg", "this speedrun", "the esports final", "the indie game"),
               ("has a huge open world", "broke the world record", "went to overtime",
                "launches on console next month")),
    "pets": (("my puppy", "the rescue cat", "our parrot", "the shelter dogs"),
             ("learned a new trick", "naps in the sun all day", "needs a loving home",
              "chased the ball across the garden")),
    "finance": (("the stock market", "my savings plan", "the central bank", "index funds"),
                ("rallied after the earnings report", "raised interest rates",
                 "beat inflation this year", "are a long term investment")),
    "science": (("the telescope", "this study", "the research team", "the mars rover"),
                ("found a distant galaxy", "measured the gene expression",
                 "published results in nature", "collected rock samples")),
    "fashion": (("the spring collection", "these sneakers", "the runway show", "vintage denim"),
                ("uses bold colors", "is back in style", "sold out in an hour",
                 "pairs well with a blazer")),
}

HARM_PHRASES: dict[str, tuple[str, ...]] = {
    "abuse": ("you are a worthless idiot", "shut up you pathetic loser",
              "nobody wants you here you moron", "go away you stupid clown"),
    "hate": ("those people are vermin and should be removed", "that group is subhuman filth",
             "their kind does not deserve rights", "we must purge them from our country"),
    "nudity": ("explicit nude photos inside", "uncensored naked pictures",
               "adult xxx content no clothes", "topless nude photoshoot leaked"),
    "violence": ("I will beat him until he bleeds", "we should shoot them all",
                 "bring a knife and stab them", "burn their houses down tonight"),
    "misinformation": ("vaccines contain tracking microchips", "the moon landing was faked",
                       "drinking bleach cures the virus", "the election was secretly rigged"),
    "spam": ("click here to win free money now", "limited offer buy followers cheap",
             "earn 5000 dollars a day from home", "free gift card visit my link"),
}

# Newer wording of the same harms: used only by harmful posts of the last LATE_FROM share of
# the period (half of them), so a model must generalize from meaning, not memorize phrases
# (spammers and trolls change their wording; the test split is the newest posts).
HARM_PHRASES_LATE: dict[str, tuple[str, ...]] = {
    "abuse": ("you are a brainless fool", "what a useless clown you are",
              "get lost you dimwitted loser", "everyone laughs at how stupid you are"),
    "hate": ("people like them are parasites on society", "that race is inferior scum",
             "those immigrants are animals", "their religion is a disease to wipe out"),
    "nudity": ("full frontal naked video here", "leaked nudes of her uncensored",
               "xxx explicit pics no censorship", "see her completely undressed"),
    "violence": ("I am going to stab him tonight", "let's kill them all with guns",
                 "smash his skull with a bat", "set fire to their homes"),
    "misinformation": ("5g towers spread the virus", "the earth is flat and nasa lies",
                       "the vaccine rewrites your dna", "the ballots were all fake"),
    "spam": ("make money fast work from home", "cheap followers and likes for sale",
             "you won a prize claim it now", "dm me for a crypto giveaway"),
}
LATE_FROM = 0.75

# Harm labels beyond the documented six that `generate(extra_labels=...)` can add: a label
# added to the taxonomy, on posts of its own, with a `label_<name>` column (the text head then
# has one more output; docs/rollout.md shows canarying such a head).
EXTRA_HARM_PHRASES: dict[str, tuple[str, ...]] = {
    "self_harm": ("I keep thinking about hurting myself", "I do not want to be here anymore",
                  "nobody would notice if I was gone", "I have been hurting myself to cope",
                  "I want to disappear for good", "I feel like giving up on everything"),
}
EXTRA_LABEL_RATE = 0.015   # share of otherwise harmless posts that carry an extra label

# Harmless sentences that share words with the harms (hard negatives for a word matcher).
BENIGN_LOOKALIKES: tuple[str, ...] = (
    "click here for the full recipe", "free gift wrapping at the store this week",
    "the boxer will beat him in round three", "we shoot the final scene tonight",
    "this naked cake recipe is delicious", "the comedian killed it on stage",
    "our team will destroy them in the final", "limited offer on museum tickets",
    "the documentary debunks the moon landing myth", "earn points with every purchase",
)
LOOKALIKE_RATE = 0.04      # share of harmless posts that carry one
LABEL_MISS_RATE = 0.10     # harmful posts the annotators did not label
LABEL_FALSE_RATE = 0.003   # harmless posts labelled harmful by mistake

# Share of harmful posts that carry each label (a post carries one label).
HARM_MIX: dict[str, float] = {
    "spam": 0.30, "abuse": 0.20, "misinformation": 0.15, "nudity": 0.15,
    "hate": 0.10, "violence": 0.10,
}

COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "ES")
LANGUAGES = {"US": "en", "GB": "en", "DE": "de", "FR": "fr", "BR": "pt", "IN": "en",
             "JP": "ja", "ES": "es"}
EPOCH = pd.Timestamp("2026-01-01", tz="UTC")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Profile:
    """Size of a generated dataset."""

    name: str
    n_users: int
    n_posts: int
    impressions_per_user: int
    mean_follows: float
    days: int = 30
    harm_rate: float = 0.03
    latent_dim: int = 8


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", n_users=400, n_posts=2_500, impressions_per_user=60, mean_follows=8),
    "demo": Profile("demo", n_users=5_000, n_posts=30_000, impressions_per_user=60,
                    mean_follows=15),
    "large": Profile("large", n_users=100_000, n_posts=1_000_000, impressions_per_user=20,
                     mean_follows=20),
    # serving catalogs for the benchmarks (`funnel bench feed --quick`, the scaling table):
    # the large profile's shape at a tenth, three tenths and three times its size
    "mid": Profile("mid", n_users=10_000, n_posts=100_000, impressions_per_user=20,
                   mean_follows=20),
    "scale-300k": Profile("scale-300k", n_users=30_000, n_posts=300_000,
                          impressions_per_user=20, mean_follows=20),
    "scale-3m": Profile("scale-3m", n_users=300_000, n_posts=3_000_000,
                        impressions_per_user=20, mean_follows=20),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


SOCIAL_SHARE = 0.33     # logged candidates from followed authors' posts
EXPLORE_SHARE = 0.10    # logged candidates drawn uniformly (exploration)
TOPIC_EXPOSURE = 0.9    # weight of the user's topic preference (vs uniform) in the old
                        # retrieval's choice of topic
POSITION_BIAS = 0.8  # examination probability (1 + position) ** -POSITION_BIAS


def examine_probability(position: np.ndarray) -> np.ndarray:
    """P(an item at 0-based `position` is looked at)."""
    return (1.0 + position) ** -POSITION_BIAS


def click_probability(affinity: np.ndarray, harmful: np.ndarray) -> np.ndarray:
    """P(click | examined)."""
    return _sigmoid(affinity - 1.2 - 2.0 * harmful)


def like_probability(affinity: np.ndarray) -> np.ndarray:
    """P(like | click)."""
    return _sigmoid(affinity - 0.8)


def hide_probability(affinity: np.ndarray, harmful: np.ndarray) -> np.ndarray:
    """P(hide | examined, not clicked)."""
    return _sigmoid(-affinity - 2.5 + 3.0 * harmful)


@dataclass(frozen=True, eq=False)
class HiddenTruth:
    """The latent model a generated dataset's engagement was drawn from; it is not part of
    the Dataset. Users and posts are 0-based indexes here (user_id - 1, post_id - 1).

    `affinity` is the formula of the module docstring; `click_probability` multiplies the
    examination probability of the position by P(click | examined)."""

    topic_pref: np.ndarray   # (users, topics)
    z_user: np.ndarray       # (users, latent_dim)
    post_topic: np.ndarray   # (posts,) topic index
    post_author: np.ndarray  # (posts,) author's user index
    z_post: np.ndarray       # (posts, latent_dim)
    quality: np.ndarray      # (posts,)
    harmful: np.ndarray      # (posts,) bool
    follow_keys: np.ndarray  # sorted follower * n_users + followee (user indexes)

    @property
    def n_users(self) -> int:
        return len(self.z_user)

    @property
    def n_posts(self) -> int:
        return len(self.z_post)

    def follows(self, users: np.ndarray, authors: np.ndarray) -> np.ndarray:
        keys = users.astype(np.int64) * self.n_users + authors
        at = np.minimum(np.searchsorted(self.follow_keys, keys), len(self.follow_keys) - 1)
        return self.follow_keys[at] == keys if len(self.follow_keys) else keys < 0

    def affinity(self, users: np.ndarray, posts: np.ndarray) -> np.ndarray:
        k = self.topic_pref.shape[1]
        return (2.2 * (k * self.topic_pref[users, self.post_topic[posts]] - 1) / k ** 0.5
                + np.einsum("ij,ij->i", self.z_user[users], self.z_post[posts])
                + self.quality[posts] + 1.0 * self.follows(users, self.post_author[posts]))

    def click_probability(self, users: np.ndarray, posts: np.ndarray,
                          positions: np.ndarray) -> np.ndarray:
        """P(click) of post `posts[i]` shown to `users[i]` at `positions[i]`."""
        return examine_probability(positions) * click_probability(
            self.affinity(users, posts), self.harmful[posts])


def _ms(days: np.ndarray) -> np.ndarray:
    return (EPOCH.value // 1_000_000 + (days * DAY_MS)).astype("int64")


def generate(
    profile: Profile | str,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    extra_labels: tuple[str, ...] = (),
) -> Dataset:
    """Generate a dataset for `profile`. Deterministic for a given (profile, seed,
    extra_labels). `extra_labels`: harm labels beyond the six (names in EXTRA_HARM_PHRASES),
    each on its own ~1.5 % of the harmless posts; the other tables are the same as without."""
    return generate_with_truth(profile, seed=seed, progress=progress,
                               extra_labels=extra_labels)[0]


def generate_with_truth(
    profile: Profile | str,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    extra_labels: tuple[str, ...] = (),
) -> tuple[Dataset, HiddenTruth]:
    """`generate`, and the hidden model its engagement was drawn from."""
    unknown = [lb for lb in extra_labels if lb not in EXTRA_HARM_PHRASES]
    if unknown:
        raise DatasetError(f"extra label {unknown[0]!r}: the generator has no texts for it; "
                           f"known: {sorted(EXTRA_HARM_PHRASES)}")
    p = PROFILES[profile] if isinstance(profile, str) else profile
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    k = len(topics)
    d = p.latent_dim

    say(f"users ({p.n_users:,})")
    user_ids = np.arange(1, p.n_users + 1, dtype=np.int64)
    country = rng.choice(len(COUNTRIES), size=p.n_users, p=[.4, .1, .1, .08, .1, .12, .05, .05])
    users = pd.DataFrame({
        "user_id": user_ids,
        "age_band": np.asarray(AGE_BANDS)[
            rng.choice(len(AGE_BANDS), size=p.n_users, p=[.06, .24, .28, .2, .12, .1])],
        "country": np.asarray(COUNTRIES)[country],
        "language": np.asarray([LANGUAGES[c] for c in COUNTRIES])[country],
        "account_age_days": rng.integers(1, 3000, size=p.n_users).astype(np.int32),
    })
    topic_pref = rng.dirichlet(np.full(k, 0.3), size=p.n_users)
    z_user = rng.normal(0, 1, size=(p.n_users, d)) / d ** 0.25
    popularity = rng.pareto(1.2, size=p.n_users) + 1.0  # power law

    say("follow graph")
    n_follow = np.minimum(rng.poisson(p.mean_follows, size=p.n_users) + 1, p.n_users - 1)
    follower = np.repeat(user_ids, n_follow)
    followee = rng.choice(user_ids, size=follower.size, p=popularity / popularity.sum())
    follows = pd.DataFrame({"follower_id": follower, "followee_id": followee})
    follows = follows[follows.follower_id != follows.followee_id].drop_duplicates()
    follows = follows.sort_values(["follower_id", "followee_id"]).reset_index(drop=True)

    say(f"posts ({p.n_posts:,})")
    activity = popularity ** 0.5
    author_idx = rng.choice(p.n_users, size=p.n_posts, p=activity / activity.sum())
    main_topic = topic_pref.argmax(axis=1)
    topic_idx = np.where(rng.random(p.n_posts) < 0.7, main_topic[author_idx],
                         rng.integers(0, k, size=p.n_posts))
    modality = np.asarray(["text", "image", "video"])[
        rng.choice(3, size=p.n_posts, p=[0.55, 0.35, 0.10])]
    created_days = np.sort(rng.uniform(0, p.days, size=p.n_posts))
    harmful = rng.random(p.n_posts) < p.harm_rate
    harm_names = list(HARM_MIX)
    harm_kind = rng.choice(len(harm_names), size=p.n_posts, p=list(HARM_MIX.values()))
    nudity = harm_names.index("nudity")
    modality = np.where(harmful & (harm_kind == nudity), "image", modality)
    subj = rng.integers(0, 4, size=p.n_posts)
    pred = rng.integers(0, 4, size=p.n_posts)
    phrase = rng.integers(0, 4, size=p.n_posts)
    # The text and its labels, from a generator of their own: the engagement tables stay
    # what they were for a seed, whatever the text does.
    trng = np.random.default_rng([seed, 7])
    late = (created_days >= LATE_FROM * p.days) & (trng.random(p.n_posts) < 0.5)
    lookalike = ~harmful & (trng.random(p.n_posts) < LOOKALIKE_RATE)
    lookalike_idx = trng.integers(0, len(BENIGN_LOOKALIKES), size=p.n_posts)
    texts = []
    for i in range(p.n_posts):
        s, v = TOPICS[topics[topic_idx[i]]]
        text = f"{s[subj[i]]} {v[pred[i]]}"
        if harmful[i]:
            phrases = (HARM_PHRASES_LATE if late[i] else HARM_PHRASES)[harm_names[harm_kind[i]]]
            text = f"{text}. {phrases[phrase[i]]}"
        elif lookalike[i]:
            text = f"{text}. {BENIGN_LOOKALIKES[lookalike_idx[i]]}"
        texts.append(text)
    # annotators: some harm missed, a few harmless posts flagged
    labelled = harmful & (trng.random(p.n_posts) >= LABEL_MISS_RATE)
    false_flag = ~harmful & (trng.random(p.n_posts) < LABEL_FALSE_RATE)
    label_kind = np.where(false_flag, trng.integers(0, len(HARM_MIX), size=p.n_posts),
                          harm_kind)
    posts = pd.DataFrame({
        "post_id": np.arange(1, p.n_posts + 1, dtype=np.int64),
        "author_id": user_ids[author_idx],
        "topic": np.asarray(topics)[topic_idx],
        "modality": modality,
        "language": users["language"].to_numpy()[author_idx],
        "text": texts,
        "created_at": pd.to_datetime(_ms(created_days), unit="ms", utc=True),
    })
    for j, h in enumerate(harm_names):
        posts[f"label_{h}"] = (labelled | false_flag) & (label_kind == j)
    posts = posts[["post_id", "author_id", "topic", "modality", "language", "text",
                   "created_at", *[f"label_{h}" for h in HARM_LABELS]]]
    # extra labels from generators of their own: the tables above stay what they were
    taken = harmful | lookalike
    for j, name in enumerate(extra_labels):
        erng = np.random.default_rng([seed, 11, j])
        on = ~taken & (erng.random(p.n_posts) < EXTRA_LABEL_RATE)
        pick = erng.integers(0, len(EXTRA_HARM_PHRASES[name]), size=p.n_posts)
        idx = np.flatnonzero(on)
        posts.loc[idx, "text"] = [f"{texts[i]}. {EXTRA_HARM_PHRASES[name][pick[i]]}"
                                  for i in idx]
        posts[f"label_{name}"] = on
        taken |= on
    z_post = rng.normal(0, 1, size=(p.n_posts, d)) / d ** 0.25
    quality = rng.normal(0, 0.5, size=p.n_posts) + 0.3 * np.log(popularity[author_idx])

    say(f"impressions ({p.n_users * p.impressions_per_user:,})")
    n_imp = p.n_users * p.impressions_per_user
    imp_user = np.repeat(np.arange(p.n_users), p.impressions_per_user)
    # Candidates, as the old system picked them: a third from followed authors' posts; most
    # of the rest from its topic-aware retrieval (a topic drawn from the user's preference,
    # mixed with a little uniform, then a post of that topic weighted by exp(quality)); and
    # EXPLORE_SHARE uniform exploration. So the log carries social, taste and exploration
    # signal, and a user's next clicks follow their taste as well as the posts' popularity.
    src = rng.random(n_imp)
    popular = np.exp(quality)
    cand = rng.integers(0, p.n_posts, size=n_imp)
    topical = np.flatnonzero(src < 1.0 - EXPLORE_SHARE)  # social rows too: their fallback
    mix = TOPIC_EXPOSURE * topic_pref[imp_user[topical]] + (1.0 - TOPIC_EXPOSURE) / k
    drawn = (mix.cumsum(1) < rng.random(len(topical))[:, None]).sum(1).clip(0, k - 1)
    for t in range(k):
        of_topic = np.flatnonzero(topic_idx == t)
        rows = topical[drawn == t]
        if len(of_topic) and len(rows):
            w = popular[of_topic]
            cand[rows] = rng.choice(of_topic, size=len(rows), p=w / w.sum())
    by_author = pd.Series(np.arange(p.n_posts)).groupby(author_idx).apply(np.asarray)
    fol_u = follows.follower_id.to_numpy() - 1
    fol_a = follows.followee_id.to_numpy() - 1
    first_follow = pd.Series(fol_a).groupby(fol_u).apply(np.asarray)
    social_rows = np.flatnonzero(src < SOCIAL_SHARE)
    for row in social_rows:
        u = imp_user[row]
        authors = first_follow.get(u)
        if authors is None:
            continue
        a = authors[rng.integers(0, len(authors))]
        posts_of = by_author.get(a)
        if posts_of is not None:
            cand[row] = posts_of[rng.integers(0, len(posts_of))]
    # Each request happens at one time; a post created after it cannot be shown, so such a
    # draw is replaced by a uniform pick among the posts that existed then.
    request_no = np.arange(n_imp) // 10
    req_days = rng.uniform(3, p.days, size=n_imp // 10 + 1)
    imp_days = req_days[request_no]
    limit = np.maximum(np.searchsorted(created_days, imp_days), 1)
    late = cand >= limit
    cand[late] = (rng.random(int(late.sum())) * limit[late]).astype(np.int64)
    truth = HiddenTruth(topic_pref=topic_pref, z_user=z_user, post_topic=topic_idx,
                        post_author=author_idx, z_post=z_post, quality=quality,
                        harmful=harmful,
                        follow_keys=np.unique(fol_u.astype(np.int64) * p.n_users + fol_a))
    affinity = truth.affinity(imp_user, cand)
    # Requests of 10 slots, ordered by a noisy version of the affinity (the old ranker).
    order = np.lexsort((-(affinity + rng.normal(0, 1.5, size=n_imp)), request_no))
    cand, affinity, imp_days = cand[order], affinity[order], imp_days[order]
    imp_user = imp_user[order]
    position = (np.arange(n_imp) % 10).astype(np.int32)
    harm = harmful[cand]
    examined = rng.random(n_imp) < examine_probability(position)
    click = examined & (rng.random(n_imp) < click_probability(affinity, harm))
    like = click & (rng.random(n_imp) < like_probability(affinity))
    comment = click & (rng.random(n_imp) < _sigmoid(affinity - 2.2))
    share = click & (rng.random(n_imp) < _sigmoid(affinity - 2.6))
    hide = examined & ~click & (rng.random(n_imp) < hide_probability(affinity, harm))
    report = examined & (rng.random(n_imp) < 0.25 * harm)
    dwell = np.where(click, rng.lognormal(2.0 + 0.4 * affinity, 0.6), 0.0).astype(np.float32)
    impressions = pd.DataFrame({
        "request_id": [f"r{n:08d}" for n in request_no],
        "user_id": user_ids[imp_user],
        "post_id": cand.astype(np.int64) + 1,
        "position": position,
        "timestamp": pd.to_datetime(_ms(imp_days), unit="ms", utc=True),
        "click": click, "like": like, "comment": comment, "share": share, "hide": hide,
        "report": report, "dwell_s": dwell,
    })
    return Dataset(name=f"synthetic-{p.name}-seed{seed}", users=users, follows=follows,
                   posts=posts, impressions=impressions), truth
