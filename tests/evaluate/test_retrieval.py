"""Blocked retrieval recall@k against naive full-matrix references on seeded tensors."""

import pytest
import torch

from dialogclip.evaluate.retrieval import retrieval_metrics


def _clip_benchmark_reference(image_emb, text_emb, text_to_image, ks, batch_size=7):
    """CLIP_benchmark's algorithm, restated: the full score matrix, a boolean positives matrix,
    per batch of rows topk + one-hot true positives / positives, hit if > 0, float32 mean."""
    scores = text_emb @ image_emb.T  # (N_texts, N_images)
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), text_to_image] = True

    def recall(s, pos, k):
        top = torch.topk(s, k, dim=1).indices
        onehot = torch.nn.functional.one_hot(top, num_classes=s.shape[1])
        true_positives = (onehot * pos.view(s.shape[0], 1, s.shape[1])).sum(dim=(1, 2))
        return true_positives / pos.sum(dim=1)

    def batched(s, pos, k):
        parts = [
            recall(s[i : i + batch_size], pos[i : i + batch_size], k)
            for i in range(0, len(s), batch_size)
        ]
        return (torch.cat(parts) > 0).float().mean().item()

    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = batched(scores, positives, k)
        metrics[f"text_retrieval_recall@{k}"] = batched(scores.T, positives.T, k)
    return metrics


def _loop_reference(image_emb, text_emb, text_to_image, k):
    """Plain Python ranks; valid when there are no tied scores."""
    scores = (text_emb @ image_emb.T).tolist()
    n_texts, n_images = len(scores), len(scores[0])
    text_hits = 0
    for t in range(n_texts):
        better = sum(s > scores[t][text_to_image[t]] for s in scores[t])
        text_hits += better < k
    image_hits = 0
    for i in range(n_images):
        column = [scores[t][i] for t in range(n_texts)]
        ranked = sorted(range(n_texts), key=lambda t: -column[t])[:k]
        image_hits += any(text_to_image[t] == i for t in ranked)
    return text_hits / n_texts, image_hits / n_images


def _dataset(seed, n_images=23, dim=16, captions=(4, 7)):
    """Unit embeddings; each image has 4-7 noisy captions, listed image by image."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(captions[0], captions[1] + 1, (n_images,), generator=gen)
    text_to_image = torch.repeat_interleave(torch.arange(n_images), counts)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen), dim=1)
    texts = images[text_to_image] + 0.9 * torch.randn(len(text_to_image), dim, generator=gen)
    return images, torch.nn.functional.normalize(texts, dim=1), text_to_image


# Block sizes: one row at a time, sizes that do / do not divide the row counts, everything.
BLOCKS = [1, 23, 37, 500, 1 << 24]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_elements", BLOCKS)
def test_matches_clip_benchmark_and_loop_references(seed, block_elements) -> None:
    images, texts, text_to_image = _dataset(seed)
    ks = (1, 5, 10)
    metrics = retrieval_metrics(images, texts, text_to_image, ks=ks, block_elements=block_elements)
    assert metrics == _clip_benchmark_reference(images, texts, text_to_image, ks)
    for k in ks:
        loop = _loop_reference(images, texts, text_to_image.tolist(), k)
        got = (metrics[f"image_retrieval_recall@{k}"], metrics[f"text_retrieval_recall@{k}"])
        assert got == pytest.approx(loop)
    assert 0 < metrics["image_retrieval_recall@1"] < metrics["image_retrieval_recall@10"] <= 1


@pytest.mark.parametrize("block_elements", BLOCKS)
def test_ties_resolve_as_clip_benchmark_resolves_them(block_elements) -> None:
    # Embeddings quantised to {-1, 0, 1}: integer scores, many exact ties, no rounding.
    images, texts, text_to_image = _dataset(3, n_images=12, dim=4)
    images, texts = images.round(decimals=0), texts.round(decimals=0)
    ks = (1, 2, 3, 5)
    scores = texts @ images.T
    assert any(len(set(row.tolist())) < len(row) for row in scores)  # ties are present
    blocked = retrieval_metrics(images, texts, text_to_image, ks=ks, block_elements=block_elements)
    assert blocked == _clip_benchmark_reference(images, texts, text_to_image, ks)


def test_shuffled_captions_give_the_same_recall() -> None:
    images, texts, text_to_image = _dataset(4)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))
    assert retrieval_metrics(images, texts[order], text_to_image[order]) == retrieval_metrics(
        images, texts, text_to_image
    )


def test_an_image_query_hits_if_any_caption_is_in_the_top_k() -> None:
    images = torch.eye(2)
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])  # text 0 is image 0's, but unlike it
    text_to_image = torch.tensor([0, 0, 1])
    metrics = retrieval_metrics(images, texts, text_to_image, ks=(1,))
    # Image 0's best text is text 1 (its own caption): hit; image 1's best is text 0: miss.
    assert metrics["text_retrieval_recall@1"] == 0.5
    # Text 0 ranks image 1 first (miss), text 1 image 0 (hit), text 2 image 0 (miss).
    assert metrics["image_retrieval_recall@1"] == pytest.approx(1 / 3)


def test_k_beyond_the_candidates_counts_every_query() -> None:
    images, texts, text_to_image = _dataset(5, n_images=4)
    metrics = retrieval_metrics(images, texts, text_to_image, ks=(4, 50))
    assert metrics["image_retrieval_recall@4"] == 1.0 and metrics["image_retrieval_recall@50"] == 1
    assert metrics["text_retrieval_recall@50"] == 1.0


def test_bad_inputs_are_refused_with_their_shapes() -> None:
    with pytest.raises(ValueError, match="text_emb"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="k must be"):
        retrieval_metrics(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), ks=(0,))
