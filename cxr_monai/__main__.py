from cxr_monai.cli import main

main()
