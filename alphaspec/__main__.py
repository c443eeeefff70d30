from alphaspec._entry import main

main()
