"""loadgen: simulated UEs and eNodeBs placing real calls through a volte stack."""
