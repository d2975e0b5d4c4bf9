"""FID-MNIST and FID-Fashion: the Fréchet distance between feature statistics of two image sets.

Heusel et al. (2017) compare generated and real images by fitting a Gaussian to each set's
features and measuring the Fréchet (2-Wasserstein) distance between the two Gaussians
(Dowson and Landau 1982):

    d^2 = ||mu_a - mu_b||^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)).

Their features come from an Inception network trained on ImageNet. Ours come from minisd's own
small classifier (:class:`minisd.models.classifier.Classifier`) trained on MNIST or
Fashion-MNIST, so we call the numbers **FID-MNIST** and **FID-Fashion**. They are NOT Inception
FID and cannot be compared with published FIDs, nor between two different classifier
checkpoints: only between sample sets scored by the same classifier.

FID also depends on the number of images: a set estimated from fewer images has noisier
statistics and scores worse even against itself drawn again. Compare FIDs at equal sizes
(e.g. 10,000 samples against the 10,000 test images).
"""

from __future__ import annotations

import numpy as np
import torch

from minisd.models.classifier import Classifier


def _as_float64(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float64, device="cpu")


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix, from its eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    # Rounding can make the zero eigenvalues of a singular covariance slightly negative.
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: torch.Tensor | np.ndarray, cov1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, cov2: torch.Tensor | np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, cov1) and N(mu2, cov2), computed in float64.

    ``mu``: ``(F,)``, ``cov``: ``(F, F)`` symmetric positive semi-definite.

    The cross term tr((cov1 cov2)^(1/2)) is computed without the square root of the
    non-symmetric product cov1 cov2 (which ``scipy.linalg.sqrtm`` takes in the usual code, and
    which can come out complex, or fail on singular covariances unless a jitter is added).
    With S = cov1^(1/2), the product cov1 cov2 = S (S cov2 S) S^-1 has the same eigenvalues
    as M = S cov2 S, which is symmetric PSD; so tr((cov1 cov2)^(1/2)) = sum_i sqrt(lambda_i(M)),
    from the real eigenvalues that ``eigh`` gives for symmetric matrices.
    """
    mu1, cov1, mu2, cov2 = map(_as_float64, (mu1, cov1, mu2, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (*mu1.shape, *mu1.shape):
        raise ValueError(f"need means (F,) and covariances (F, F) of one F, got {tuple(mu1.shape)}, "
                         f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    sqrt_cov1 = _symmetric_sqrt(cov1)
    middle = sqrt_cov1 @ cov2 @ sqrt_cov1
    middle = (middle + middle.T) / 2  # symmetric up to rounding; make it exactly so for eigvalsh
    trace_sqrt_product = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt_product
    # The exact value is >= 0; rounding can leave a tiny negative number for identical inputs.
    return max(distance.item(), 0.0)


@torch.no_grad()
def feature_statistics(classifier: Classifier, images: torch.Tensor,
                       batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(F,)`` and covariance ``(F, F)``, float64, of ``classifier.features`` over ``images``.

    ``images``: ``(N, C, H, W)`` in [0, 1], N >= 2; N well above F gives a full-rank covariance.
    The classifier is put in eval mode. The covariance is the unbiased one (divides by N - 1).
    """
    if len(images) < 2:
        raise ValueError(f"a covariance needs at least 2 images, got {len(images)}")
    classifier.eval()
    features = torch.cat([classifier.features(images[start:start + batch_size].to(classifier.device)).cpu()
                          for start in range(0, len(images), batch_size)]).double()
    return features.mean(dim=0), features.T.cov()


def fid(classifier: Classifier, images_a: torch.Tensor, images_b: torch.Tensor, batch_size: int = 500) -> float:
    """FID-MNIST / FID-Fashion between two image sets ``(N, C, H, W)`` in [0, 1], with our classifier's features.

    0 for identical sets; it grows as the sets' feature distributions part. Not Inception FID:
    see the module docstring.
    """
    return frechet_distance(*feature_statistics(classifier, images_a, batch_size),
                            *feature_statistics(classifier, images_b, batch_size))
