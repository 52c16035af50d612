from xdm.cli import main

main()
