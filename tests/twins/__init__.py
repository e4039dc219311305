"""Hand-written twins of published models, in the style of torchvision and Hugging Face.

Written from the papers and the libraries' documented architectures (not copied), with the
libraries' module names so their `state_dict` keys are the published ones. The example specs in
specs/ are tested against them: same weights in, same outputs out.
"""
