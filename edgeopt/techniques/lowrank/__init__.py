"""Low-rank factorization: Tucker-2 / CP convs and SVD linears (factorize), with the ranks chosen by energy or
VBMF (ranks)."""
