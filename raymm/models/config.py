"""Typed configuration of the model stage: alignment, fusion, the two towers and the loss.

:class:`ModelConfig` is the ``model`` section of :class:`raymm.config.RaymmConfig`. Every section
is strict (unknown keys are errors, assignments are validated) and every field says what it does.
Input dimensions are not configuration: they come from the features and are passed to
:func:`raymm.models.towers.TwoTower` (and stored next to the config by ``save_pretrained``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from raymm.data.schema import POSITIVE_EVENTS
from raymm.settings_base import Modality

AlignMethod = Literal["contrastive", "cca", "linear", "kg", "none"]
FusionMethod = Literal["concat", "attention", "gated"]
UserPooling = Literal["mean", "attention", "transformer"]
RecLoss = Literal["softmax", "bpr"]


class _Section(BaseModel):
    """A model config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TemperatureConfig(_Section):
    """A softmax temperature: starts at ``initial`` and, with ``learn``, is learned as
    log(temperature) (as CLIP's logit scale), clamped to [``min``, ``max``]. The alignment and
    the recommendation losses each have one."""

    initial: float = Field(gt=0.0, description="Initial temperature.")
    learn: bool = Field(True, description="Learn the temperature (log-parametrised) or keep it fixed.")
    min: float = Field(gt=0.0, description="Lower clamp of a learned temperature.")
    max: float = Field(gt=0.0, description="Upper clamp of a learned temperature.")

    @model_validator(mode="after")
    def _ordered(self) -> TemperatureConfig:
        if not self.min <= self.initial <= self.max:
            raise ValueError(
                f"temperature {self.initial} must lie within [min, max] = [{self.min}, {self.max}]"
            )
        return self


class AlignConfig(_Section):
    """How each modality's features are mapped into one shared space (see ``raymm.models.align``)."""

    method: AlignMethod = Field(
        "contrastive",
        description="Alignment method, a key of ALIGNERS: contrastive (CLIP InfoNCE), cca, linear "
        "(ridge maps into the anchor's PCA space), kg (tag-supervised contrastive), none (the heads of "
        "contrastive, no alignment loss).",
    )
    standardize: bool = Field(
        True,
        description="Centre and scale each raw feature dimension by statistics of the training (warm) items "
        "(fitted by TwoTower.fit_alignment, stored with the weights) before alignment.",
    )
    shared_dim: int = Field(128, gt=0, description="Width of the shared space every modality is mapped to.")
    pca_dim: int | None = Field(
        None,
        gt=0,
        description="Reduce each raw modality to this many principal components before alignment "
        "(fitted in closed form by Aligner.fit); None keeps raw features. Modalities no wider than "
        "this, and audio read by the conv encoder, are left as they are.",
    )
    hidden_dim: int = Field(
        256,
        ge=0,
        description="Hidden width of the MLP projection heads of the learned methods (contrastive, kg, "
        "none alike, so they differ only in their loss); 0 makes each head one linear layer.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the projection heads.")
    mode: Literal["pairs", "anchor"] = Field(
        "pairs",
        description="Which modality pairs the contrastive loss ties together: all pairs, or each "
        "modality with the anchor.",
    )
    anchor: str = Field(
        "text",
        description="Anchor modality (contrastive mode=anchor, cca/linear target space). If absent "
        "from the features, the first modality is the anchor.",
    )
    temperature: TemperatureConfig = Field(
        default_factory=lambda: TemperatureConfig(initial=0.07, min=0.01, max=1.0),
        description="The contrastive alignment losses' softmax temperature.",
    )
    ridge: float = Field(
        1e-3,
        ge=0.0,
        description="Ridge term of the closed-form fits (cca whitening, linear least squares), "
        "relative to the mean variance of the features it regularises.",
    )
    kg_max_tag_share: float = Field(
        0.02,
        gt=0.0,
        le=1.0,
        description="kg: only tags carried by at most this share of the catalog's items make positives. "
        "A tag most items share (a country, a language, a broad genre) says nothing about which items "
        "are alike, and with it nearly every pair of a batch was a positive: the loss pulled the whole "
        "catalog together. 1.0 keeps every tag (the old behaviour).",
    )
    trainable: bool = Field(
        False,
        description="cca/linear: after fit, keep training the projections (initialised from the fit) "
        "with the InfoNCE loss; False freezes them as a fixed first stage.",
    )
    audio_encoder: Literal["mlp", "conv"] = Field(
        "mlp",
        description="How audio is read: mlp (a projection head on the flat vector) or conv "
        "(MelAudioEncoder over the mel_stats spectrogram, whose mel bands the features' manifest "
        "records; needs a learned aligner).",
    )
    audio_channels: int = Field(64, gt=0, description="conv audio encoder: channels of its 1-D convolutions.")
    audio_pool: Literal["meanmax", "gru"] = Field(
        "meanmax", description="conv audio encoder: pool over time by mean+max or by a GRU's last state."
    )


class FusionConfig(_Section):
    """How the aligned modality vectors of one item become one content vector (``raymm.models.fusion``)."""

    method: FusionMethod = Field(
        "gated", description="Fusion method, a key of FUSIONS: concat (+MLP), attention (pooling), gated."
    )
    out_dim: int | None = Field(
        None, gt=0, description="Width of the fused vector; None uses align.shared_dim."
    )
    hidden_dim: int = Field(256, gt=0, description="Hidden width of the fusion MLPs (concat, gate network).")
    heads: int = Field(
        4, gt=0, description="attention: heads of the pooling attention; must divide shared_dim."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the fusion MLPs.")
    modality_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Training only: probability of hiding each present modality of an item; an "
        "item never loses all of its present modalities.",
    )


class TowersConfig(_Section):
    """The item tower (fused content -> embed_dim) and the user tower (history pooling -> embed_dim)."""

    embed_dim: int = Field(64, gt=0, description="Width of item and user vectors (L2-normalised).")
    item_hidden_dim: int = Field(256, gt=0, description="Hidden width of the item tower's MLP.")
    item_id_dropout: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Training only: probability of treating a warm item as cold, so the content path "
        "keeps carrying the item.",
    )
    user_heads: int = Field(
        2, gt=0, description="Heads of the user tower's attention; must divide embed_dim."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in the towers' MLPs and attention.")


class UserStateConfig(_Section):
    """What a user is to the model: the user-state spec that training, evaluation and serving share.

    A user is the pooled vectors of their ``max_history`` most recent items whose event is one of
    ``events``, oldest first. Training builds its examples, evaluation its users, the ranker its
    labels and serving its live state from this one spec; the artifact records it with the model.
    """

    max_history: int = Field(
        100,
        gt=0,
        description="Recent positive items kept per user (the history window). 100: on the synthetic "
        "benchmark (steady tastes) 50 -> 100 raised the served test Recall@20 from 0.0727 to 0.0740 "
        "(3 seeds; 20 -> 50 had raised NDCG@20 by 5%); MovieLens-100k did not change (few users hold "
        "more than 50 positives). Those figures trained on 50-item windows: the two-tower's training "
        "examples take the latest ``train.history_window`` items of this window. Ranker examples hold "
        "one window per user state, so their memory grows with it.",
    )
    events: list[str] = Field(
        list(POSITIVE_EVENTS),
        min_length=1,
        description="Event kinds that count as a positive: they enter the history, are retrieval "
        "targets, and are the ranker's positive labels.",
    )
    pooling: UserPooling = Field(
        "mean",
        description="Pool a user's recent item vectors by masked mean, by attention with a learned query "
        "and recency embeddings, or by one transformer layer followed by that attention. mean is the "
        "default: on the synthetic benchmark (static tastes) it did better than attention in the same "
        "number of epochs.",
    )


class LossConfig(_Section):
    """The recommendation loss and how much of the alignment loss is added to it."""

    kind: RecLoss = Field(
        "softmax",
        description="softmax: sampled softmax over in-batch (+ mixed) negatives; bpr: pairwise BPR "
        "against the same negatives.",
    )
    temperature: TemperatureConfig = Field(
        default_factory=lambda: TemperatureConfig(initial=0.2, min=0.02, max=1.0),
        description="The temperature dividing user.item cosine scores in the loss. At initialisation "
        "those scores are noise of std ~1/sqrt(embed_dim); divided by a small temperature they give "
        "random logits of std > 1, which the loss first removes by collapsing every vector onto one "
        "direction (loss = log(batch)) where it has no gradient left to personalise; learned, it can "
        "sharpen once scores carry signal.",
    )
    logq_correction: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="How much of log(sampling probability) is subtracted from each candidate's logit "
        "(Yi et al. 2019): 1 the full correction, 0 none (true/false read as 1/0). Fully corrected, "
        "the model estimates the full softmax, popularity included; uncorrected, in-batch negatives "
        "push popular items down and the scores are relative to popularity, which the served blend "
        "adds back. 1 is the default: less correction served better on MovieLens-100k and worse on "
        "the synthetic benchmark (README, Quality).",
    )
    mixed_negatives: int = Field(
        0,
        ge=0,
        description="Uniformly sampled catalog items added to the in-batch negatives per step (mixed "
        "negative sampling, Yang et al. 2020); the training loop draws them.",
    )
    align_weight: float = Field(
        0.1, ge=0.0, description="total loss = rec loss + align_weight * alignment loss."
    )


class CollabConfig(_Section):
    """The item-item collaborative part of the served score (``raymm.recommend.collab``: EASE in a
    dot-product form, scored from the live history). Its weight and ridge strength are chosen on
    validation; weight 0 (the two-tower alone) is one of the choices."""

    enabled: bool = Field(
        True, description="Fit the item-item part at the end of training and let validation weigh it."
    )
    rank: int = Field(
        128,
        gt=0,
        description="Eigenvectors of the item co-occurrence matrix kept: the item-item vectors' width, "
        "added to the served index's. On MovieLens-100k and the synthetic benchmark 64-256 scored "
        "within noise of every eigenvector (exact EASE) on test.",
    )


class ContentConfig(_Section):
    """The content part of the served score (``raymm.recommend.scorers.ContentScorer``): how like
    the user's recent items an item's raw features are, scored from the live history; new items
    get theirs from their features. Its weight is chosen on validation; weight 0 is one of the
    choices."""

    enabled: bool = Field(
        True, description="Fit the content part at the end of training and let validation weigh it."
    )
    dim: int = Field(
        128,
        gt=0,
        description="Principal directions of the items' standardised raw features kept: the content "
        "vectors' width, added to the served index's (the features are 2,688 wide for text, image and "
        "audio). On MovieLens-100k and the synthetic benchmark 64 and 128 scored within noise of the "
        "full width on test.",
    )


class ModelConfig(_Section):
    """The ``model`` section: what the model reads (modalities, item ids), alignment, fusion, towers, loss."""

    modalities: list[Modality] | None = Field(
        None,
        description="Modalities the model reads, a subset of those the features hold; None reads "
        "every one they hold (the ablation's single-modality variants set one).",
    )
    item_id_embeddings: bool = Field(
        True,
        description="Give each warm item (one with training events) a learned id embedding, added "
        "through a gate to its content vector in the item tower; cold items, and every item when "
        "false, are their content alone.",
    )

    align: AlignConfig = Field(default_factory=AlignConfig, description="Alignment into the shared space.")
    fusion: FusionConfig = Field(
        default_factory=FusionConfig, description="Fusion of the aligned modalities."
    )
    towers: TowersConfig = Field(default_factory=TowersConfig, description="Item and user towers.")
    user_state: UserStateConfig = Field(
        default_factory=UserStateConfig, description="The user-state spec: history window, events, pooling."
    )
    loss: LossConfig = Field(default_factory=LossConfig, description="Recommendation and alignment losses.")
    collab: CollabConfig = Field(
        default_factory=CollabConfig, description="The item-item collaborative part of the served score."
    )
    content: ContentConfig = Field(
        default_factory=ContentConfig, description="The content-similarity part of the served score."
    )

    @model_validator(mode="after")
    def _heads_divide_widths(self) -> ModelConfig:
        if self.fusion.method == "attention" and self.align.shared_dim % self.fusion.heads:
            raise ValueError(
                f"fusion.heads={self.fusion.heads} must divide align.shared_dim={self.align.shared_dim}"
            )
        if self.user_state.pooling != "mean" and self.towers.embed_dim % self.towers.user_heads:
            raise ValueError(
                f"towers.user_heads={self.towers.user_heads} must divide towers.embed_dim={self.towers.embed_dim}"
            )
        return self


RankLoss = Literal["bce", "focal"]


class RankerConfig(_Section):
    """The ``rank`` section: the pointwise ranker that re-orders the retriever's top-N (``raymm.models.ranker``).

    Labels come from the interaction log: events in ``model.user_state.events`` are positives,
    events in ``negative_events`` are natural negative impressions, and each positive also brings
    ``negatives_per_positive`` sampled negatives, ``hard_negative_share`` of them drawn from the
    retriever's top ``retriever_top_n`` for that user state and the rest uniformly from the
    catalog, never an item the user interacted with. The Ray Train run itself (workers, failures,
    checkpoint storage) follows the ``train`` section.

    ``view`` is a positive of weight 0.5 by default: it is an impression the user chose to open,
    and the retrieval stage and its evaluation count it as a positive (``user_state.events``),
    so labelling it negative would train the ranker against the truth the listwise metrics use.
    It weighs less than click/like/purchase/play because it says less about wanting the item (on
    the synthetic benchmark view and click share one middle affinity band).
    """

    hidden_dims: list[PositiveInt] = Field(
        [256, 128], min_length=1, description="Hidden widths of the scoring MLP, input side first."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout after each hidden layer of the MLP.")
    fusion: FusionConfig = Field(
        default_factory=FusionConfig,
        description="The ranker's own fusion of the item's aligned modality vectors (same methods as "
        "the two-tower stage; missing modalities are masked the same way).",
    )
    negative_events: list[str] = Field(
        ["skip"], description="Event kinds labelled 0: logged impressions the user turned down."
    )
    event_weights: dict[str, float] = Field(
        {"click": 1.0, "like": 1.0, "purchase": 1.0, "play": 1.0, "view": 0.5, "skip": 1.0},
        description="Loss weight of each event kind's examples (kinds not listed weigh 1); sampled "
        "negatives weigh 1.",
    )
    negatives_per_positive: int = Field(
        4, ge=0, description="Sampled negatives (hard + uniform) drawn for each positive example."
    )
    hard_negative_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the sampled negatives drawn from the retriever's top-N for the "
        "positive's user state (the rest are uniform over the catalog); only positives inside that "
        "top-N get them. 0 by default: the retriever was fitted on the training split, so its top-N "
        "there reflects memorised pairs, and on the quickstart data a share of 0.5 cut validation "
        "retrieve-then-rank NDCG@20 of the ranker alone from 0.031 to 0.019 (tied once the "
        "retrieval weight is chosen).",
    )
    retriever_top_n: PositiveInt = Field(
        200,
        description="Candidates the retriever hands the ranker: where hard negatives are drawn from "
        "and how many items retrieve-then-rank re-orders in evaluation.",
    )
    loss: RankLoss = Field(
        "bce", description="bce: weighted binary cross-entropy; focal: focal loss (Lin et al., ICCV 2017)."
    )
    focal_gamma: float = Field(
        2.0, ge=0.0, description="focal: the focusing exponent (0 gives back binary cross-entropy)."
    )
    epochs: PositiveInt = Field(5, description="Maximum training epochs of the ranker.")
    batch_size: int = Field(512, gt=1, description="Examples per step (per worker).")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-5, ge=0.0, description="AdamW weight decay.")
    patience: PositiveInt = Field(
        2, description="Stop after this many epochs without a better validation AUC."
    )

    @model_validator(mode="after")
    def _weights_non_negative(self) -> RankerConfig:
        negative = sorted(e for e, w in self.event_weights.items() if w < 0)
        if negative:
            raise ValueError(f"event_weights must be non-negative; {negative} are not")
        return self
